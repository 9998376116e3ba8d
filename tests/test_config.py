"""Configuration: defaults, every kind of mistake with its one-line message, units, schedules,
password resolution, the example file and relative paths."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingestd.config.credentials import config_path_from, resolve_password
from ingestd.config.load import load_config, parse_config
from ingestd.config.placeholders import BUILTIN_PLACEHOLDERS, placeholder_names, render
from ingestd.config.schema import (
    DEFAULT_CONFIG_PATH,
    AfterUploadConfig,
    AlertsConfig,
    BandwidthLimit,
    BandwidthWindow,
    Config,
    LedgerConfig,
    LogConfig,
    RecordConfig,
    RuleConfig,
    ShareConfig,
    StatusConfig,
    UploadConfig,
    ValtConfig,
    WatchConfig,
)
from ingestd.errors import ConfigError
from ingestd.intake.sidecar import read_sidecar
from ingestd.units import format_duration, format_size, parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent
BASE = Path("/etc/ingestd")
SECRET = "s3cret-Pa55word"
MINIMAL: dict[str, Any] = {
    "valt": {"url": "https://valt.example.com", "username": "ingest"},
    "watch": {"paths": ["/srv/capture/export"]},
}


def config_with(section: str, **keys: object) -> dict[str, Any]:
    """MINIMAL with ``keys`` set in ``section``."""
    data = copy.deepcopy(MINIMAL)
    data[section] = {**(data.get(section) or {}), **keys}
    return data


def parse(data: object) -> Config:
    return parse_config(data, BASE)


def config_error(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return caught.value


# --------------------------------------------------------------------------- defaults


def test_minimal_config_takes_the_documented_defaults() -> None:
    config = parse(MINIMAL)
    assert config.valt == ValtConfig(url="https://valt.example.com", username="ingest")
    assert config.valt.password_env == "INGESTD_VALT_PASSWORD"
    assert config.valt.credential == "valt-password"
    assert config.valt.verify_tls is True
    assert config.valt.timeout == 30.0
    assert config.watch.paths == (Path("/srv/capture/export"),)
    assert config.watch.recursive is True
    assert config.watch.include == ("*.mp4", "*.mov", "*.mkv", "*.avi", "*.m4v", "*.ts", "*.webm")
    assert config.watch.exclude == ("*.part", "*.tmp", "*.crdownload", ".*", "~*")
    assert (config.watch.settle, config.watch.rescan_interval) == (10.0, 300.0)
    assert config.watch.follow_symlinks is False and config.watch.force_polling is False
    assert config.watch.done_marker is None
    assert config.watch.check_open_writers is True and config.watch.check_container is True
    assert config.watch.min_free == 5 * 1024**3
    assert config.upload == UploadConfig(
        workers=2,
        chunk_size=8 * 1024 * 1024,
        bandwidth_limit=None,
        max_attempts=20,
        backoff_initial=1.0,
        backoff_max=300.0,
        confirm="ready",
        confirm_timeout=6 * 3600.0,
        drain_timeout=30.0,
    )
    assert config.record == RecordConfig()
    assert config.record.name == "{stem}" and dict(config.record.template) == {}
    assert config.record.share == ShareConfig() and config.record.sidecar is True
    assert config.after_upload == AfterUploadConfig(action="keep")
    assert config.ledger == LedgerConfig(Path("/var/lib/ingestd/ledger.db"), 7)
    assert config.ledger.forget_after is None  # done jobs are kept for ever
    assert parse(config_with("ledger", forget_after="400d")).ledger.forget_after == 400 * 86400
    assert config.log == LogConfig(format="auto", level="info", redact_paths=False)
    assert config.status == StatusConfig(listen=("127.0.0.1", 9465))
    assert config.alerts == AlertsConfig(webhook=None, backlog_age=3600.0)
    assert config.source is None


def test_a_section_given_as_null_means_its_defaults() -> None:
    data = {**MINIMAL, "upload": None, "record": None, "log": None, "status": None}
    config = parse(data)
    assert config.upload == UploadConfig()
    assert config.status.listen == ("127.0.0.1", 9465)


def test_config_is_frozen_and_hashable() -> None:
    config = parse(
        config_with("record", template={1: "x"}, rules=[{"match": "a/**", "template": {2: "y"}}])
    )
    same = parse(
        config_with("record", template={"1": "x"}, rules=[{"match": "a/**", "template": {2: "y"}}])
    )
    assert config == same and hash(config) == hash(same)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.upload.workers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.record.template["1"] = "changed"  # type: ignore[index]


def test_empty_file_content_reports_the_first_required_key() -> None:
    assert str(config_error(None)) == "valt.url: is required, e.g. url: https://valt.example.com"


# --------------------------------------------------------------------------- mistakes

MISTAKES: list[tuple[dict[str, Any], str]] = [
    # unknown keys, with and without a close match, at every depth
    (
        config_with("upload", chunk_sise="8MiB"),
        "upload.chunk_sise: unknown key (did you mean chunk_size?)",
    ),
    ({**MINIMAL, "watcher": {}}, "watcher: unknown key (did you mean watch?)"),
    (
        {**MINIMAL, "zzz": 1},
        "zzz: unknown key (known keys: valt, watch, upload, record, after_upload, ledger,"
        " log, status, alerts)",
    ),
    (
        config_with("record", share={"usres": [1]}),
        "record.share.usres: unknown key (did you mean users?)",
    ),
    (
        config_with("record", rules=[{"match": "a"}, {"match": "b"}, {"match": "c", "nmae": "x"}]),
        "record.rules[2].nmae: unknown key (did you mean name?)",
    ),
    (
        config_with("record", rules=[{"match": "a", "share": {"group": [1]}}]),
        "record.rules[0].share.group: unknown key (did you mean groups?)",
    ),
    # required keys
    (
        {"valt": {"username": "u"}, "watch": {"paths": ["/a"]}},
        "valt.url: is required, e.g. url: https://valt.example.com",
    ),
    (
        {"valt": {"url": "https://v"}, "watch": {"paths": ["/a"]}},
        "valt.username: is required, e.g. username: ingest",
    ),
    (
        {"valt": MINIMAL["valt"]},
        "watch.paths: is required, e.g. paths: [/srv/capture/export]",
    ),
    (
        config_with("watch", paths=[]),
        "watch.paths: must list at least one entry (got an empty list)",
    ),
    (config_with("watch", paths=["/a", 3]), "watch.paths[1]: must be a non-empty string (got 3)"),
    (
        config_with("watch", paths=[{"path": "/a", "nam": "x"}]),
        "watch.paths[0].nam: unknown key (did you mean name?)",
    ),
    (
        config_with("watch", paths=[{"name": "x"}]),
        "watch.paths[0].path: is required, e.g. path: /mnt/export",
    ),
    (
        config_with("watch", paths=[{"path": "/a", "name": "room/3"}]),
        'watch.paths[0].name: must be a name, not a path (got "room/3")',
    ),
    (
        config_with("watch", paths=[{"path": "/a", "name": "x"}, {"path": "/b", "name": "x"}]),
        "watch.paths[1].name: 'x' is already the name of watch.paths[0]: names must differ",
    ),
    (
        config_with("watch", require_mount="yes"),
        'watch.require_mount: must be true or false (got "yes")',
    ),
    (
        config_with("record", rules=[{"name": "x"}]),
        'record.rules[0].match: is required, e.g. match: "room-3/**"',
    ),
    # wrong types
    (
        {**MINIMAL, "upload": [1]},
        "upload: must be a mapping of keys to values (got a list)",
    ),
    (
        config_with("upload", workers="two"),
        'upload.workers: must be a whole number from 1 to 64 (got "two")',
    ),
    (
        config_with("upload", workers=True),
        "upload.workers: must be a whole number from 1 to 64 (got true)",
    ),
    (
        config_with("upload", workers=2.5),
        "upload.workers: must be a whole number from 1 to 64 (got 2.5)",
    ),
    (config_with("watch", recursive="yes"), 'watch.recursive: must be true or false (got "yes")'),
    (config_with("watch", recursive=None), "watch.recursive: must be true or false (got null)"),
    (
        config_with("watch", include="*.mp4,*.mov", exclude=5),
        "watch.exclude: must be a list of strings (got 5)",
    ),
    (
        config_with("record", name={"stem": None}),
        "record.name: must be a string; YAML reads an unquoted {...} as a mapping, so put it in"
        ' quotes: "{stem}"',
    ),
    (config_with("valt", username=""), 'valt.username: must be a non-empty string (got "")'),
    (
        config_with("valt", password_env="MY-PASS"),
        'valt.password_env: must be an environment variable name (got "MY-PASS")',
    ),
    (
        config_with("valt", credential="../x"),
        'valt.credential: must be a name, not a path (got "../x")',
    ),
    (
        config_with("record", share={"users": [True]}),
        "record.share.users[0]: must be an id number or a name (got true)",
    ),
    (config_with("record", template={1: [1]}), "record.template.1: must be a string (got a list)"),
    (
        config_with("record", template={"Room": "x"}),
        'record.template.Room: field ids must be numbers such as 12 (got "Room")',
    ),
    (
        config_with("record", template={1: "a", "01": "b"}),
        "record.template.1: field id given twice",
    ),
    (
        config_with("record", rules={"match": "a"}),
        "record.rules: must be a list of rules (got a mapping)",
    ),
    (
        config_with("record", rules=["a/**"]),
        'record.rules[0]: must be a mapping with match: (got "a/**")',
    ),
    # impossible values
    (
        config_with("upload", workers=0),
        "upload.workers: must be a whole number from 1 to 64 (got 0)",
    ),
    (
        config_with("upload", workers=65),
        "upload.workers: must be a whole number from 1 to 64 (got 65)",
    ),
    (
        config_with("upload", chunk_size="1KiB"),
        "upload.chunk_size: must be 0 (the whole file in one request) or at least 64KiB"
        ' (got "1KiB")',
    ),
    (
        config_with("upload", max_attempts=0),
        "upload.max_attempts: must be a whole number of at least 1 (got 0)",
    ),
    (
        config_with("upload", backoff_initial=0),
        "upload.backoff_initial: must be more than 0 s (got 0)",
    ),
    (
        config_with("upload", backoff_initial="10s", backoff_max="5s"),
        "upload.backoff_max: must be at least backoff_initial (10 s) (got 5 s)",
    ),
    (
        config_with("upload", confirm_timeout="0s"),
        'upload.confirm_timeout: must be more than 0 s (got "0s")',
    ),
    (
        config_with("upload", drain_timeout=-1),
        "upload.drain_timeout: must not be negative (got -1)",
    ),
    (
        config_with("upload", confirm="done"),
        'upload.confirm: must be one of ready, uploaded (got "done")',
    ),
    (config_with("watch", settle=-5), "watch.settle: must not be negative (got -5)"),
    (
        config_with("watch", rescan_interval="500ms"),
        'watch.rescan_interval: must be at least 1 s (got "500ms")',
    ),
    (
        config_with("ledger", backups=-1),
        "ledger.backups: must be a whole number of at least 0 (got -1)",
    ),
    (
        config_with("ledger", forget_after="0d"),
        'ledger.forget_after: must be more than 0 s (got "0d")',
    ),
    (
        config_with("ledger", forget_after="a year"),
        'ledger.forget_after: must be a duration like 10s, 5m, 6h or 30d (got "a year")',
    ),
    (config_with("valt", timeout=0), "valt.timeout: must be more than 0 s (got 0)"),
    (
        config_with("log", level="verbose"),
        'log.level: must be one of debug, info, warning, error (got "verbose")',
    ),
    (
        config_with("log", format="xml"),
        'log.format: must be one of json, console, auto (got "xml")',
    ),
    (
        config_with("after_upload", action="archive"),
        'after_upload.action: must be one of keep, move, delete (got "archive")',
    ),
    (
        config_with("after_upload", action="move"),
        "after_upload.move_to: required when after_upload.action is move",
    ),
    (
        config_with("after_upload", action="delete", keep_for="30d"),
        "after_upload.keep_for: has no effect when after_upload.action is delete (the source goes"
        " at once); use keep or move",
    ),
    (
        config_with("after_upload", action="move", move_to="/srv/capture/export/done"),
        "after_upload.move_to: /srv/capture/export/done is inside watch.paths[0]"
        " (/srv/capture/export), so files put there would be picked up again; choose a folder"
        " outside it or one that watch.exclude names",
    ),
    (
        config_with("watch", paths=["/a", "/a/b"]),
        "watch.paths[1]: /a/b is already covered by watch.paths[0] (/a)",
    ),
    (
        config_with("watch", paths=["/a", "/a/"]),
        "watch.paths[1]: /a is already covered by watch.paths[0] (/a)",
    ),
    (
        config_with("record", template_id=0),
        "record.template_id: must be a whole number of at least 1 (got 0)",
    ),
    # bad sizes and durations
    (
        config_with("upload", chunk_size="eight"),
        'upload.chunk_size: must be a size like 8MiB, 512KiB or 20MB (got "eight")',
    ),
    (
        config_with("watch", min_free="5 gigs"),
        'watch.min_free: must be a size like 8MiB, 512KiB or 20MB (got "5 gigs")',
    ),
    (
        config_with("watch", settle="ten seconds"),
        'watch.settle: must be a duration like 10s, 5m, 6h or 30d (got "ten seconds")',
    ),
    (
        config_with("alerts", backlog_age=True),
        "alerts.backlog_age: must be a duration like 10s, 5m, 6h or 30d (got true)",
    ),
    # regex and placeholders
    (
        config_with("record", pattern="(?P<room>[a-z]+"),
        "record.pattern: is not a valid regular expression: missing ), unterminated subpattern at"
        ' position 0 (got "(?P<room>[a-z]+")',
    ),
    (
        config_with("record", pattern="(?P<name>.*)"),
        "record.pattern: named group (?P<name>...) hides the built-in placeholder {name};"
        " rename the group",
    ),
    (
        config_with("record", name="{stm}"),
        "record.name: unknown placeholder {stm} (known: ext, mtime, name, now, parent, relpath,"
        " size, stem)",
    ),
    (
        config_with("record", pattern="(?P<room>[^/]+)/", template={7: "{rooom}"}),
        "record.template.7: unknown placeholder {rooom} (known: ext, mtime, name, now, parent,"
        " relpath, room, size, stem)",
    ),
    (
        config_with("record", rules=[{"match": "a/**", "name": "{room}"}]),
        "record.rules[0].name: unknown placeholder {room} (known: ext, mtime, name, now, parent,"
        " relpath, size, stem)",
    ),
    (
        config_with("record", rules=[{"match": "a/**", "template": {3: "{x}"}}]),
        "record.rules[0].template.3: unknown placeholder {x} (known: ext, mtime, name, now,"
        " parent, relpath, size, stem)",
    ),
    (
        config_with("record", name="{stem"),
        "record.name: bad placeholder syntax: expected '}' before end of string (got \"{stem\")",
    ),
    (config_with("record", name="  "), 'record.name: must not be empty (got "  ")'),
    (
        config_with("record", name="{stem.upper}"),
        "record.name: placeholder {stem.upper} must be a plain name like {stem}"
        ' (got "{stem.upper}")',
    ),
    (
        config_with("record", name="{stem!r}"),
        "record.name: placeholder {stem!r}: conversions are not supported",
    ),
    # URLs
    (
        config_with("valt", url="valt.example.com"),
        'valt.url: must be an http or https URL with a host (got "valt.example.com")',
    ),
    (
        config_with("valt", url="ftp://valt"),
        'valt.url: must be an http or https URL with a host (got "ftp://valt")',
    ),
    (
        config_with("valt", url="https://valt/api/v3/"),
        'valt.url: leave out /api/v3, it is appended (got "https://valt/api/v3/")',
    ),
    (
        config_with("valt", url="https://valt:99999"),
        'valt.url: has an invalid port (got "https://valt:99999")',
    ),
    (
        config_with("alerts", webhook="hooks.example.com/T0/B0/XYZ"),
        "alerts.webhook: must be an http or https URL, or null (value not shown)",
    ),
    # status.listen
    (
        config_with("status", listen="9465"),
        'status.listen: must be "HOST:PORT" with a port from 1 to 65535, like "127.0.0.1:9465" or'
        ' "[::1]:9465", or null for off (got "9465")',
    ),
    (
        config_with("status", listen="127.0.0.1:0"),
        'status.listen: must be "HOST:PORT" with a port from 1 to 65535, like "127.0.0.1:9465" or'
        ' "[::1]:9465", or null for off (got "127.0.0.1:0")',
    ),
    (
        config_with("status", listen="::1:9465"),
        'status.listen: must be "HOST:PORT" with a port from 1 to 65535, like "127.0.0.1:9465" or'
        ' "[::1]:9465", or null for off (got "::1:9465")',
    ),
    (
        config_with("status", listen="[::zz]:9465"),
        'status.listen: has an invalid IPv6 address (got "[::zz]:9465")',
    ),
    (
        config_with("status", listen=9465),
        'status.listen: must be "HOST:PORT" with a port from 1 to 65535, like "127.0.0.1:9465" or'
        ' "[::1]:9465", or null for off (got 9465)',
    ),
    # bandwidth schedules
    (
        config_with("upload", bandwidth_limit={"8-18": "1MB"}),
        'upload.bandwidth_limit.8-18: must be "default" or a time window like "08:00-18:00"',
    ),
    (
        config_with("upload", bandwidth_limit={"08:00-25:00": "1MB"}),
        'upload.bandwidth_limit.08:00-25:00: must be "default" or a time window like "08:00-18:00"',
    ),
    (
        config_with("upload", bandwidth_limit={"08:00-08:00": "1MB"}),
        "upload.bandwidth_limit.08:00-08:00: window starts and ends at the same time; use default",
    ),
    (
        config_with("upload", bandwidth_limit={"08:00-18:00": "fast"}),
        'upload.bandwidth_limit.08:00-18:00: must be a size like 8MiB, 512KiB or 20MB (got "fast")',
    ),
    (
        config_with("upload", bandwidth_limit=0),
        "upload.bandwidth_limit: must be more than 0 bytes per second; use null for no limit"
        " (got 0)",
    ),
]


@pytest.mark.parametrize(("data", "message"), MISTAKES, ids=[m for _, m in MISTAKES])
def test_each_mistake_gets_one_line_naming_the_key_and_the_value(
    data: dict[str, Any], message: str
) -> None:
    error = config_error(data)
    assert str(error) == message
    assert message.startswith(error.key + ": ")


def test_a_format_spec_that_cannot_apply_is_refused_at_load_time() -> None:
    error = config_error(config_with("record", name="{size:%Y}"))
    assert str(error).startswith("record.name: placeholder {size:%Y}: Invalid format specifier")


def test_the_top_level_must_be_a_mapping() -> None:
    error = config_error(["valt", "watch"])
    assert error.key == ""
    assert "must be a mapping with sections such as valt: and watch: (got a list)" in str(error)


def test_odd_keys_stay_on_one_line() -> None:
    assert str(config_error({**MINIMAL, "a\nb": 1})).startswith('"a\\nb": unknown key')
    odd: dict[Any, Any] = {**MINIMAL, True: 1}
    assert str(config_error(odd)).startswith("true: unknown key")


@pytest.mark.parametrize(
    "url",
    [
        "https://valt.example.com/?access_token=TOPSECRET",
        "https://valt.example.com/#TOPSECRET",
        "https://valt.example.com?TOPSECRET",
    ],
)
def test_a_url_with_a_query_is_refused_without_echoing_it(url: str) -> None:
    error = config_error(config_with("valt", url=url))
    assert error.key == "valt.url"
    assert "TOPSECRET" not in str(error)
    assert "query string" in str(error)


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    error = config_error(config_with("valt", url="https://admin:TOPSECRET@valt.example.com"))
    assert str(error) == (
        "valt.url: must not carry a user name or password; use valt.username and valt.password_env"
    )


def test_a_bad_inline_password_is_never_echoed() -> None:
    error = config_error(config_with("valt", password=12345678))
    assert str(error) == "valt.password: must be a string; put it in quotes (value not shown)"


def test_a_bad_webhook_is_never_echoed() -> None:
    error = config_error(config_with("alerts", webhook="ftp://hooks/TOPSECRET"))
    assert "TOPSECRET" not in str(error)


# --------------------------------------------------------------------------- accepted forms


def test_the_url_is_normalised() -> None:
    config = parse(config_with("valt", url="HTTPS://valt.example.com:8443/valt/"))
    assert config.valt.url == "https://valt.example.com:8443/valt"


def test_a_single_string_is_a_one_item_list() -> None:
    config = parse(config_with("watch", paths="/srv/a", include="*.mp4", exclude=None))
    assert config.watch.paths == (Path("/srv/a"),)
    assert config.watch.include == ("*.mp4",)
    assert config.watch.exclude == ()


def test_enum_values_are_case_insensitive() -> None:
    config = parse(config_with("log", level="DEBUG", format="Json"))
    assert (config.log.level, config.log.format) == ("debug", "json")


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9465", ("::1", 9465)),
        ("[::]:1", ("::", 1)),
        (None, None),
    ],
)
def test_status_listen_forms(listen: str | None, expected: tuple[str, int] | None) -> None:
    assert parse(config_with("status", listen=listen)).status.listen == expected


def test_record_template_share_and_rules() -> None:
    config = parse(
        config_with(
            "record",
            name="{room} {mtime:%Y-%m-%d}",
            pattern=r"^(?P<room>[^/]+)/",
            template={12: "{room}", "013": 7, "14": 1.5},
            template_id=3,
            share={"users": [1, "jdoe"], "groups": "Faculty"},
            sidecar=False,
            rules=[
                {"match": "room-3/**", "name": "R3 {stem}", "share": {"groups": [9]}},
                {"match": "*.mov", "template": {5: "{now:%Y}"}},
            ],
        )
    )
    record = config.record
    assert dict(record.template) == {"12": "{room}", "13": "7", "14": "1.5"}
    assert record.template_id == 3
    assert record.share == ShareConfig(users=(1, "jdoe"), groups=("Faculty",))
    assert record.sidecar is False
    assert record.rules[0] == RuleConfig(
        match="room-3/**", name="R3 {stem}", template=None, share=ShareConfig(groups=(9,))
    )
    assert record.rules[1].name is None and record.rules[1].share is None
    assert dict(record.rules[1].template or {}) == {"5": "{now:%Y}"}


def test_move_to_may_sit_in_a_watched_folder_when_exclude_names_it() -> None:
    data = config_with("after_upload", action="move", move_to="/srv/capture/export/.uploaded")
    config = parse(data)
    assert config.after_upload.move_to == Path("/srv/capture/export/.uploaded")


def test_failed_to_inside_a_watched_folder_is_refused() -> None:
    error = config_error(config_with("after_upload", failed_to="/srv/capture/export/failed"))
    assert error.key == "after_upload.failed_to"


# --------------------------------------------------------------------------- units

SIZES: list[tuple[object, int]] = [
    (0, 0),
    (1234, 1234),
    ("100", 100),
    ("100B", 100),
    ("512KiB", 512 * 1024),
    ("8MiB", 8 * 1024**2),
    ("8mib", 8 * 1024**2),
    ("1.5GiB", 3 * 1024**3 // 2),
    ("2TiB", 2 * 1024**4),
    ("20MB", 20_000_000),
    ("1kb", 1000),
    ("3 GB", 3_000_000_000),
    ("1TB", 10**12),
    (4096.0, 4096),
]


@pytest.mark.parametrize(("text", "expected"), SIZES)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text, "k") == expected


@pytest.mark.parametrize(
    "bad", ["eight", "8 MiBs", "-1MB", "MB", "", "8 M", True, False, None, -1, 1.5, [1]]
)
def test_parse_size_refuses(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_size(bad, "upload.chunk_size")
    assert str(caught.value).startswith("upload.chunk_size: must ")
    assert "\n" not in str(caught.value)


DURATIONS: list[tuple[object, float]] = [
    (0, 0.0),
    (90, 90.0),
    (2.5, 2.5),
    ("45", 45.0),
    ("10s", 10.0),
    ("5m", 300.0),
    ("5min", 300.0),
    ("6h", 21600.0),
    ("30d", 2_592_000.0),
    ("1w", 604_800.0),
    ("1h30m", 5400.0),
    ("1h 30m 15s", 5415.0),
    ("250ms", 0.25),
    ("1.5h", 5400.0),
    ("10S", 10.0),
]


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text, "k") == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad", ["ten", "10x", "1h30", "s", "", "-5s", True, None, -1, float("inf"), [1]]
)
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration(bad, "watch.settle")
    assert str(caught.value).startswith("watch.settle: must ")


def test_parse_duration_message_names_the_value() -> None:
    with pytest.raises(
        ConfigError,
        match=r'^watch\.settle: must be a duration like 10s, 5m, 6h or 30d \(got "ten"\)$',
    ):
        parse_duration("ten", "watch.settle")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (8 * 1024**2, "8.0 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.25, "250 ms"),
        (40, "40 s"),
        (120, "2 min"),
        (90, "1.5 min"),
        (10800, "3 h"),
        (2_592_000, "30 d"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- bandwidth


def at(hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2024, 3, 5, hour, minute)


def test_a_constant_bandwidth_limit() -> None:
    limit = parse(config_with("upload", bandwidth_limit="20MB")).upload.bandwidth_limit
    assert limit == BandwidthLimit(default=20_000_000, windows=())
    assert limit.rate_at(at(3)) == 20_000_000


def test_a_bandwidth_schedule_with_a_window_across_midnight() -> None:
    schedule = {"08:00-18:00": "10MB", "22:00-06:00": None, "default": "1MiB"}
    limit = parse(config_with("upload", bandwidth_limit=schedule)).upload.bandwidth_limit
    assert limit is not None
    assert limit.windows == (
        BandwidthWindow(datetime.time(8), datetime.time(18), 10_000_000),
        BandwidthWindow(datetime.time(22), datetime.time(6), None),
    )
    expected = {
        at(7, 59): 1024**2,
        at(8): 10_000_000,
        at(17, 59): 10_000_000,
        at(18): 1024**2,
        at(21, 59): 1024**2,
        at(22): None,
        at(23, 59): None,
        at(0): None,
        at(5, 59): None,
        at(6): 1024**2,
    }
    assert {moment: limit.rate_at(moment) for moment in expected} == expected


def test_the_first_matching_window_wins_and_24_00_ends_at_midnight() -> None:
    schedule = {"09:00-12:00": "1MB", "00:00-24:00": "2MB", "22:00-24:00": "3MB"}
    limit = parse(config_with("upload", bandwidth_limit=schedule)).upload.bandwidth_limit
    assert limit is not None
    assert limit.rate_at(at(10)) == 1_000_000
    assert limit.rate_at(at(23)) == 2_000_000  # 00:00-24:00 is all day and comes first
    assert limit.windows[2].contains(datetime.time(23, 30))
    assert not limit.windows[2].contains(datetime.time(0, 0))


def test_rate_at_uses_the_wall_time_of_an_aware_datetime() -> None:
    limit = BandwidthLimit(None, (BandwidthWindow(datetime.time(8), datetime.time(9), 5),))
    tz = datetime.timezone(datetime.timedelta(hours=5))
    assert limit.rate_at(datetime.datetime(2024, 1, 1, 8, 30, tzinfo=tz)) == 5


def test_a_schedule_without_any_limit_is_no_limit() -> None:
    schedule = {"08:00-18:00": None, "default": None}
    assert parse(config_with("upload", bandwidth_limit=schedule)).upload.bandwidth_limit is None
    assert parse(config_with("upload", bandwidth_limit={})).upload.bandwidth_limit is None


# --------------------------------------------------------------------------- placeholders


def test_placeholder_names_and_render() -> None:
    template = "{room}-{stem}.{ext} {size:>6} {mtime:%Y-%m-%d} {now} {{literal}}"
    assert placeholder_names(template, "record.name") == {
        "room",
        "stem",
        "ext",
        "size",
        "mtime",
        "now",
    }
    values: dict[str, object] = {
        "room": "R3",
        "stem": "clip",
        "ext": "mp4",
        "size": 42,
        "mtime": datetime.datetime(2024, 5, 6, 7, 8, 9),
        "now": datetime.datetime(2024, 5, 7, 1, 2, 3),
    }
    assert render(template, values) == "R3-clip.mp4     42 2024-05-06 2024-05-07 01:02:03 {literal}"


def test_render_leaves_missing_or_unmatched_groups_empty() -> None:
    assert render("[{room}] {stem}", {"stem": "a", "room": None}) == "[] a"
    assert render("[{room}] {stem}", {"stem": "a"}) == "[] a"


def test_builtin_placeholders() -> None:
    assert {
        "stem",
        "name",
        "ext",
        "parent",
        "relpath",
        "size",
        "mtime",
        "now",
    } == BUILTIN_PLACEHOLDERS


def test_placeholder_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^record\.name: bad placeholder syntax: "):
        placeholder_names("{stem", "record.name")


# --------------------------------------------------------------------------- password


def valt_config(**keys: Any) -> ValtConfig:
    return ValtConfig(url="https://valt.example.com", username="ingest", **keys)


def test_password_comes_from_the_systemd_credential_first(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "valt-password").write_text("from-credential\n")
    (tmp_path / "file").write_text("from-file\n")
    valt = valt_config(password_file=tmp_path / "file", password="inline")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds"), "INGESTD_VALT_PASSWORD": "env"}
    assert resolve_password(valt, environ) == "from-credential"


def test_password_order_after_the_credential(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("from-file\n\n")
    environ = {
        "CREDENTIALS_DIRECTORY": str(tmp_path / "no-such-dir"),
        "INGESTD_VALT_PASSWORD": "env",
    }
    with_file = valt_config(password_file=tmp_path / "file", password="inline")
    assert resolve_password(with_file, environ) == "from-file\n"  # one newline stripped
    assert resolve_password(valt_config(password="inline"), environ) == "env"
    assert resolve_password(valt_config(password="inline"), {}) == "inline"
    other_env = valt_config(password_env="OTHER", credential="other")
    assert resolve_password(other_env, {"OTHER": "x", "INGESTD_VALT_PASSWORD": "y"}) == "x"


def test_the_credential_name_is_configurable(tmp_path: Path) -> None:
    (tmp_path / "site-pass").write_text("cred\r\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert resolve_password(valt_config(credential="site-pass"), environ) == "cred"


def test_no_password_anywhere_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_password(valt_config(), {"CREDENTIALS_DIRECTORY": "/nonexistent"})
    assert str(caught.value) == (
        "valt.password_env: environment variable INGESTD_VALT_PASSWORD is not set; set it,"
        " or set valt.password_file or valt.credential"
    )


def test_an_unreadable_or_empty_password_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^valt\.password_file: cannot read .*missing"):
        resolve_password(
            valt_config(password_file=tmp_path / "missing"), {"INGESTD_VALT_PASSWORD": "x"}
        )
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^valt\.password_file: .*empty is empty$"):
        resolve_password(valt_config(password_file=tmp_path / "empty"), {})


def test_the_password_never_shows_in_a_repr_or_message() -> None:
    config = parse(config_with("valt", password=SECRET, url="https://valt.example.com"))
    assert config.valt.password == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert SECRET not in repr(config.valt)
    webhook = "https://hooks.example.com/services/" + SECRET
    assert SECRET not in repr(parse(config_with("alerts", webhook=webhook)))
    messages: list[str] = []
    for data in (
        config_with("valt", password=SECRET, timeout="soon"),
        config_with("valt", password=[SECRET]),
        config_with("valt", url=f"https://valt.example.com/?access_token={SECRET}"),
        config_with("valt", url=f"https://u:{SECRET}@valt.example.com"),
    ):
        messages.append(str(config_error(data)))
    for message in messages:
        assert SECRET not in message


# --------------------------------------------------------------------------- files


def test_config_example_yaml_loads_and_names_every_key() -> None:
    example = REPO / "config.example.yaml"
    config = load_config(example)
    assert config.source == example
    assert config.valt.url == "https://valt.example.com"
    assert config.valt.username == "ingest"
    assert config.watch.paths
    data = yaml.safe_load(example.read_text())
    sections = {field.name for field in dataclasses.fields(Config)} - {"source"}
    assert set(data) == sections
    derived = {"watch": {"names"}}  # from watch.paths' {path, name} form, not a key
    for section in sections:
        dataclass_type = type(getattr(config, section))
        keys = {field.name for field in dataclasses.fields(dataclass_type)}
        assert set(data[section]) == keys - derived.get(section, set()), section


_SECTION_LINE = re.compile(r"(\w+):")
_KEY_LINE = re.compile(r"  (\w+):(.*)")
# After "e.g.": a flow mapping, a quoted string, or a path, size or duration; prose
# ("e.g. a folder called") and shell commands in backquotes are not examples.
_EXAMPLE_START = re.compile(r"""e\.g\. (?=[{'"/0-9])""")


def _example_value(text: str) -> str:
    """The YAML value at the start of ``text``: a balanced {...}, a quoted string, or a word."""
    if text[0] in "'\"":
        return text[: text.index(text[0], 1) + 1]
    if text[0] != "{":
        return re.split(r"[\s,;)]", text, maxsplit=1)[0].rstrip(".")
    depth, quote = 0, ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "{}":
            depth += 1 if char == "{" else -1
            if depth == 0:
                return text[: index + 1]
    raise AssertionError(f"unbalanced example: {text}")


def _block_example(lines: list[str], keys: set[str]) -> dict[str, Any] | None:
    """An indented run of comment lines that is YAML for keys of the section, or None."""
    try:
        data = yaml.safe_load(textwrap.dedent("\n".join(lines)))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) and set(data) <= keys else None


def commented_examples(text: str) -> list[tuple[str, str, object]]:
    """Every example in the comments of config.example.yaml as (section, key, value).

    An inline "e.g. VALUE" belongs to the key on its line or, in a comment block,
    to the key after the block; an indented block (``#   rules:`` and below) is
    YAML for keys of the section it is in.
    """
    example = yaml.safe_load(text)
    found: list[tuple[str, str, object]] = []
    section: str | None = None
    prose: list[str] = []
    block: list[str] = []

    def take_block() -> None:
        if block and section is not None:
            parsed = _block_example(block, set(example[section]))
            if parsed is None:
                prose.extend(block)  # indented prose, such as a numbered list
            else:
                found.extend((section, key, value) for key, value in parsed.items())
        block.clear()

    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("#"):
            comment = stripped[1:]
            if comment.startswith("   "):
                block.append(comment)
            else:
                take_block()
                prose.append(comment)
            continue
        take_block()
        if (match := _SECTION_LINE.fullmatch(line)) is not None:
            section, prose = match[1], []
            continue
        key_line = _KEY_LINE.match(line)
        if key_line is not None and section is not None:
            notes = " ".join([*prose, key_line[2].partition("#")[2]])
            for start in _EXAMPLE_START.finditer(notes):
                value = yaml.safe_load(_example_value(notes[start.end() :]))
                found.append((section, key_line[1], value))
        prose = []
    return found


def test_commented_examples_in_config_example_yaml_are_valid(tmp_path: Path) -> None:
    text = (REPO / "config.example.yaml").read_text()
    examples = commented_examples(text)
    documented = {(section, key) for section, key, _ in examples}
    assert documented >= {
        ("valt", "password_file"),
        ("watch", "done_marker"),
        ("upload", "bandwidth_limit"),
        ("record", "pattern"),
        ("record", "template"),
        ("record", "share"),
        ("record", "sidecar"),
        ("record", "rules"),
        ("after_upload", "move_to"),
        ("status", "listen"),
    }, documented  # the reader above still finds the examples
    for section, key, value in examples:
        if (section, key) == ("record", "sidecar"):  # an example of a sidecar file's content
            sidecar = tmp_path / "clip.mp4.json"
            sidecar.write_text(json.dumps(value))
            read_sidecar(sidecar)
            continue
        data = yaml.safe_load(text)  # the example file, with this one value put in
        data[section][key] = value
        if (section, key) == ("record", "pattern"):  # its named groups become placeholders
            groups = re.compile(str(value)).groupindex
            data["record"]["name"] = " ".join(f"{{{group}}}" for group in groups)
        try:
            parse(data)
        except ConfigError as exc:
            raise AssertionError(f"the example of {section}.{key} ({value!r}): {exc}") from None


def _write_ca(path: Path) -> None:
    """A self-signed certificate in PEM form (openssl CLI: the venv has no ``cryptography``)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(path.with_suffix(".key")), "-out", str(path), "-days", "2",
         "-subj", "/CN=ingestd test CA"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "valt:\n"
        "  url: https://valt.example.com\n"
        "  username: ingest\n"
        "  password_file: secrets/pw\n"
        "  ca_file: ./ca.pem\n"
        "watch:\n"
        "  paths: [export, ../capture]\n"
        "after_upload:\n"
        "  action: move\n"
        "  move_to: done\n"
        "  failed_to: /abs/failed\n"
        "ledger:\n"
        "  path: state/ledger.db\n"
    )
    _write_ca(folder / "ca.pem")  # load_config loads it
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/config.yaml")
    assert config.source == folder / "config.yaml"
    assert config.valt.password_file == folder / "secrets" / "pw"
    assert config.valt.ca_file == folder / "ca.pem"
    assert config.watch.paths == (folder / "export", tmp_path / "capture")
    assert config.after_upload.move_to == folder / "done"
    assert config.after_upload.failed_to == Path("/abs/failed")
    assert config.ledger.path == folder / "state" / "ledger.db"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "valt:\n  url: https://v\n  username: [ingest\nwatch:\n  paths: [/a]\n")
    message = load_error(path)
    assert message.startswith(f"{path}: YAML error at line 4, column ")
    assert "line 3" in message  # where the unclosed list began


def test_a_tab_indent_is_a_yaml_error_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "valt:\n\turl: https://v\n")
    assert load_error(path).startswith(f"{path}: YAML error at line 2, column 1: ")


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "upload:\n  workers: 2\nupload:\n  workers: 3\n")
    assert load_error(path) == f"{path}: YAML error at line 3, column 1: duplicate key upload"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "valt: {url: 'https://v', username: u}\n"
        "watch: {paths: [/a]}\n"
        "record:\n"
        "  share: &staff {groups: [1]}\n"
        "  rules:\n"
        "    - match: 'a/**'\n"
        "      share:\n"
        "        <<: *staff\n"
        "        groups: [2]\n",
    )
    assert load_config(path).record.rules[0].share == ShareConfig(groups=(2,))


def test_missing_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such file"
    assert load_error(tmp_path) == f"{tmp_path}: is a folder, not a file"
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    assert load_error(tmp_path / "bin.yaml") == f"{tmp_path / 'bin.yaml'}: not UTF-8 text (byte 0)"
    assert "got a list" in load_error(write(tmp_path, "- valt\n- watch\n"))


def test_an_empty_file_asks_for_the_required_keys(tmp_path: Path) -> None:
    assert (
        load_error(write(tmp_path, ""))
        == "valt.url: is required, e.g. url: https://valt.example.com"
    )


def test_config_path_from() -> None:
    assert config_path_from("/x.yaml", {"INGESTD_CONFIG": "/y.yaml"}) == Path("/x.yaml")
    assert config_path_from(None, {"INGESTD_CONFIG": "/y.yaml"}) == Path("/y.yaml")
    assert config_path_from(None, {"INGESTD_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert config_path_from(None, {}) == Path("/etc/ingestd/config.yaml")


def test_watch_config_can_be_built_directly() -> None:
    watch = WatchConfig(paths=(Path("/a"),))
    assert watch.include[0] == "*.mp4" and watch.min_free == 5 * 1024**3


def test_watch_paths_take_a_name_and_label_each_folder_by_name_or_index() -> None:
    config = parse(config_with("watch", paths=["/a", {"path": "/b", "name": "room-3"}]))
    assert config.watch.paths == (Path("/a"), Path("/b"))
    assert config.watch.names == (None, "room-3")
    assert [config.watch.label(i) for i in range(2)] == ["watch.paths[0]", "room-3"]
    assert config.watch.require_mount is False
    assert parse(config_with("watch", require_mount=True)).watch.require_mount is True
