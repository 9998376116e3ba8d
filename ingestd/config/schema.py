"""Configuration: typed frozen dataclasses, ``load_config()``, one-line dotted-path errors.

The YAML key names are a contract (design.md, "Configuration"). Every section is
parsed by the same small table-driven ``section()``: a table maps each key to a
parser ``(value, dotted_key) -> parsed``; unknown keys are refused with a
did-you-mean hint; checks that span keys or sections run after the tables.
Parsing does no I/O: only ``load_config()`` reads the file (and loads the CA
file) and only ``config/credentials.py`` reads secrets.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import re
import ssl
import urllib.parse
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ingestd.config.patterns import gitignore_match
from ingestd.config.placeholders import BUILTIN_PLACEHOLDERS, check_template, placeholder_names
from ingestd.config.values import (
    Parse,
    as_bool,
    as_mapping,
    as_text,
    duration,
    join_key,
    key_label,
    name_only,
    one_of,
    optional,
    path_parser,
    resolve_path,
    section,
    string_list,
    unknown_key,
    whole_number,
)
from ingestd.errors import ConfigError
from ingestd.units import describe, format_duration, parse_size

__all__ = [
    "CLEARTEXT_DETAIL",
    "DEFAULT_CONFIG_PATH",
    "MIN_CHUNK_SIZE",
    "AfterUploadConfig",
    "AlertsConfig",
    "BandwidthLimit",
    "BandwidthWindow",
    "Config",
    "FrozenMapping",
    "LedgerConfig",
    "LogConfig",
    "RecordConfig",
    "RuleConfig",
    "ShareConfig",
    "StatusConfig",
    "UploadConfig",
    "ValtConfig",
    "WatchConfig",
    "cleartext_password",
    "config_path_from",
    "is_loopback",
    "load_config",
    "parse_config",
    "resolve_password",
    "resolve_status_token",
]

DEFAULT_CONFIG_PATH = Path("/etc/ingestd/config.yaml")
MIN_CHUNK_SIZE = 64 * 1024
DEFAULT_INCLUDE = ("*.mp4", "*.mov", "*.mkv", "*.avi", "*.m4v", "*.ts", "*.webm")
DEFAULT_EXCLUDE = ("*.part", "*.tmp", "*.crdownload", ".*", "~*")


class FrozenMapping(Mapping[str, str]):
    """A read-only, hashable ``str -> str`` mapping, so that frozen configs stay hashable."""

    __slots__ = ("_data",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class ValtConfig:
    url: str
    username: str
    password_env: str = "INGESTD_VALT_PASSWORD"
    password_file: Path | None = None
    password: str | None = field(default=None, repr=False)
    credential: str = "valt-password"
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class WatchConfig:
    paths: tuple[Path, ...]
    recursive: bool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    follow_symlinks: bool = False
    settle: float = 10.0
    rescan_interval: float = 300.0
    force_polling: bool = False
    done_marker: str | None = None
    check_open_writers: bool = True
    check_container: bool = True
    min_free: int = 5 * 1024**3


@dataclass(frozen=True, slots=True)
class BandwidthWindow:
    """``rate`` bytes/s (None: unlimited) from ``start`` until ``end``, local wall time."""

    start: datetime.time
    end: datetime.time
    rate: int | None

    def contains(self, moment: datetime.time) -> bool:
        """Whether ``moment`` falls in [start, end).

        An end before the start crosses midnight; start == end (00:00-24:00) is all day.
        """
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True, slots=True)
class BandwidthLimit:
    """Upload rate limit in bytes/s shared by all workers; None means unlimited."""

    default: int | None = None
    windows: tuple[BandwidthWindow, ...] = ()

    def rate_at(self, now: datetime.datetime) -> int | None:
        """The limit at local wall time ``now``: the first window holding it, else the default."""
        moment = now.time().replace(tzinfo=None)
        for window in self.windows:
            if window.contains(moment):
                return window.rate
        return self.default


@dataclass(frozen=True, slots=True)
class UploadConfig:
    workers: int = 2
    chunk_size: int = 8 * 1024**2
    bandwidth_limit: BandwidthLimit | None = None
    max_attempts: int = 20
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    confirm: Literal["ready", "uploaded"] = "ready"
    confirm_timeout: float = 6 * 3600.0
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ShareConfig:
    """Valt user/group ids (int) or names (str, resolved against the server)."""

    users: tuple[int | str, ...] = ()
    groups: tuple[int | str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Overrides for files whose relative path matches ``match``; None keeps the default."""

    match: str
    name: str | None = None
    template: Mapping[str, str] | None = None
    share: ShareConfig | None = None


@dataclass(frozen=True, slots=True)
class RecordConfig:
    name: str = "{stem}"
    pattern: str | None = None
    template: Mapping[str, str] = FrozenMapping()
    template_id: int | None = None
    share: ShareConfig = ShareConfig()
    sidecar: bool = True
    rules: tuple[RuleConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class AfterUploadConfig:
    action: Literal["keep", "move", "delete"] = "keep"
    move_to: Path | None = None
    failed_to: Path | None = None
    keep_for: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    path: Path = Path("/var/lib/ingestd/ledger.db")
    backups: int = 7


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    redact_paths: bool = False


@dataclass(frozen=True, slots=True)
class StatusConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 9465)
    token_file: Path | None = None  # or the systemd credential status-token


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # A webhook URL often is the secret itself (Slack, Teams): keep it out of reprs.
    webhook: str | None = field(default=None, repr=False)
    backlog_age: float = 3600.0


@dataclass(frozen=True, slots=True)
class Config:
    valt: ValtConfig
    watch: WatchConfig
    upload: UploadConfig = UploadConfig()
    record: RecordConfig = RecordConfig()
    after_upload: AfterUploadConfig = AfterUploadConfig()
    ledger: LedgerConfig = LedgerConfig()
    log: LogConfig = LogConfig()
    status: StatusConfig = StatusConfig()
    alerts: AlertsConfig = AlertsConfig()
    source: Path | None = None


# --------------------------------------------------------------------------- valt

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _valt_url(value: object, key: str) -> str:
    """An http(s) server address; never echoes a query string or user info it refuses."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            key, f"must be a URL like https://valt.example.com (got {describe(value)})"
        )
    text = value.strip()
    if "?" in text or "#" in text:
        raise ConfigError(
            key,
            "must not carry a query string or fragment (such as access_token);"
            " give the address only",
        )
    parts = urllib.parse.urlsplit(text)
    if "@" in parts.netloc:
        raise ConfigError(
            key, "must not carry a user name or password; use valt.username and valt.password_env"
        )
    try:
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError:
        raise ConfigError(key, f"has an invalid port (got {describe(text)})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or " " in text:
        raise ConfigError(key, f"must be an http or https URL with a host (got {describe(text)})")
    path = parts.path.rstrip("/")
    if path.lower().endswith("/api/v3"):
        raise ConfigError(key, f"leave out /api/v3, it is appended (got {describe(text)})")
    return f"{parts.scheme.lower()}://{parts.netloc}{path}"


def _env_name(value: object, key: str) -> str:
    if isinstance(value, str) and _ENV_NAME_RE.fullmatch(value):
        return value
    raise ConfigError(key, f"must be an environment variable name (got {describe(value)})")


def _secret(value: object, key: str) -> str | None:
    """The inline password: its value never appears in a message."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string; put it in quotes (value not shown)")
    if not value:
        raise ConfigError(key, "is empty; remove it or give the password")
    return value


def _parse_valt(value: object, key: str, base: Path) -> ValtConfig:
    parsers: dict[str, Parse] = {
        "url": _valt_url,
        "username": as_text,
        "password_env": _env_name,
        "password_file": optional(path_parser(base)),
        "password": _secret,
        "credential": name_only,
        "verify_tls": as_bool,
        "ca_file": optional(path_parser(base)),
        "timeout": duration(0.0, above=True),
    }
    required = {"url": "https://valt.example.com", "username": "ingest"}
    valt = ValtConfig(**section(value, key, parsers, required))
    if valt.ca_file is not None and not valt.verify_tls:
        raise ConfigError(
            join_key(key, "ca_file"),
            f"contradicts {key}.verify_tls: false (a CA file is only used to verify the"
            " server); remove verify_tls: false to verify against it, or remove ca_file",
        )
    return valt


# --------------------------------------------------------------------------- watch


def _watch_paths(base: Path) -> Parse:
    def parse_watch_paths(value: object, key: str) -> tuple[Path, ...]:
        texts = string_list(value, key, allow_empty=False)
        return tuple(resolve_path(base, text, f"{key}[{i}]") for i, text in enumerate(texts))

    return parse_watch_paths


def _patterns(*, allow_empty: bool) -> Parse:
    def parse_patterns(value: object, key: str) -> tuple[str, ...]:
        return string_list(value, key, allow_empty=allow_empty)

    return parse_patterns


def _check_watch_paths(watch: WatchConfig) -> None:
    """Refuse a folder listed twice, or (recursive) inside another: files would be seen twice."""
    for index, path in enumerate(watch.paths):
        for other_index, other in enumerate(watch.paths[:index]):
            if path == other or (watch.recursive and path.is_relative_to(other)):
                raise ConfigError(
                    f"watch.paths[{index}]",
                    f"{path} is already covered by watch.paths[{other_index}] ({other})",
                )
            if watch.recursive and other.is_relative_to(path):
                raise ConfigError(
                    f"watch.paths[{other_index}]",
                    f"{other} is already covered by watch.paths[{index}] ({path})",
                )


def _parse_watch(value: object, key: str, base: Path) -> WatchConfig:
    parsers: dict[str, Parse] = {
        "paths": _watch_paths(base),
        "recursive": as_bool,
        "include": _patterns(allow_empty=False),
        "exclude": _patterns(allow_empty=True),
        "follow_symlinks": as_bool,
        "settle": duration(0.0),
        "rescan_interval": duration(1.0),
        "force_polling": as_bool,
        "done_marker": optional(name_only),
        "check_open_writers": as_bool,
        "check_container": as_bool,
        "min_free": parse_size,
    }
    watch = WatchConfig(**section(value, key, parsers, {"paths": "[/srv/capture/export]"}))
    _check_watch_paths(watch)
    return watch


# --------------------------------------------------------------------------- upload

_WINDOW_RE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def _rate(value: object, key: str) -> int:
    rate = parse_size(value, key)
    if rate == 0:
        raise ConfigError(
            key, "must be more than 0 bytes per second; use null for no limit (got 0)"
        )
    return rate


def _time_of_day(hours: str, minutes: str, *, end: bool) -> datetime.time | None:
    """HH:MM as a time; "24:00" is allowed as an end and means midnight."""
    hour, minute = int(hours), int(minutes)
    if end and (hour, minute) == (24, 0):
        return datetime.time(0, 0)
    if hour > 23 or minute > 59:
        return None
    return datetime.time(hour, minute)


def _window(name: object, key: str) -> tuple[datetime.time, datetime.time]:
    window_key = join_key(key, key_label(name))
    wrong = ConfigError(window_key, 'must be "default" or a time window like "08:00-18:00"')
    match = _WINDOW_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise wrong
    start = _time_of_day(match[1], match[2], end=False)
    end = _time_of_day(match[3], match[4], end=True)
    if start is None or end is None:
        raise wrong
    if start == end and int(match[3]) != 24:
        # "00:00-24:00" is all day; "08:00-08:00" could mean all day or nothing.
        raise ConfigError(window_key, "window starts and ends at the same time; use default")
    return start, end


def _bandwidth_schedule(mapping: dict[Any, Any], key: str) -> BandwidthLimit | None:
    default: int | None = None
    windows: list[BandwidthWindow] = []
    for name, raw in mapping.items():
        if name == "default":
            default = optional(_rate)(raw, join_key(key, "default"))
            continue
        start, end = _window(name, key)
        rate = optional(_rate)(raw, join_key(key, key_label(name)))
        windows.append(BandwidthWindow(start, end, rate))
    if default is None and all(window.rate is None for window in windows):
        return None
    return BandwidthLimit(default, tuple(windows))


def _bandwidth_limit(value: object, key: str) -> BandwidthLimit | None:
    """``20MB`` (constant), or ``{"08:00-18:00": 10MB, "22:00-06:00": null, default: null}``."""
    if value is None:
        return None
    if isinstance(value, dict):
        return _bandwidth_schedule(value, key)
    return BandwidthLimit(default=_rate(value, key))


def _chunk_size(value: object, key: str) -> int:
    size = parse_size(value, key)
    if 0 < size < MIN_CHUNK_SIZE:
        raise ConfigError(
            key,
            f"must be 0 (the whole file in one request) or at least 64KiB (got {describe(value)})",
        )
    return size


def _parse_upload(value: object, key: str, base: Path) -> UploadConfig:
    parsers: dict[str, Parse] = {
        "workers": whole_number(1, 64),
        "chunk_size": _chunk_size,
        "bandwidth_limit": _bandwidth_limit,
        "max_attempts": whole_number(1),
        "backoff_initial": duration(0.0, above=True),
        "backoff_max": duration(0.0, above=True),
        "confirm": one_of("ready", "uploaded"),
        "confirm_timeout": duration(0.0, above=True),
        "drain_timeout": duration(0.0),
    }
    upload = UploadConfig(**section(value, key, parsers))
    if upload.backoff_max < upload.backoff_initial:
        raise ConfigError(
            join_key(key, "backoff_max"),
            f"must be at least backoff_initial ({format_duration(upload.backoff_initial)})"
            f" (got {format_duration(upload.backoff_max)})",
        )
    return upload


# --------------------------------------------------------------------------- record

_QUOTE_HINT = 'YAML reads an unquoted {...} as a mapping, so put it in quotes: "{stem}"'


def _template_text(value: object, key: str) -> str:
    """A placeholder template; numbers are taken as text. Names are checked later."""
    if isinstance(value, dict):
        raise ConfigError(key, f"must be a string; {_QUOTE_HINT}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string (got {describe(value)})")
    placeholder_names(value, key)
    return value


def _record_name(value: object, key: str) -> str:
    text = _template_text(value, key)
    if not text.strip():
        raise ConfigError(key, f"must not be empty (got {describe(value)})")
    return text


def _field_id(name: object, key: str) -> str:
    """Template field ids are numbers; YAML gives ints or digit strings, both become "12"."""
    if isinstance(name, int) and not isinstance(name, bool) and name >= 0:
        return str(name)
    if isinstance(name, str) and name.strip().isdigit():
        return str(int(name.strip()))
    raise ConfigError(
        join_key(key, key_label(name)),
        f"field ids must be numbers such as 12 (got {describe(name)})",
    )


def _template(value: object, key: str) -> FrozenMapping:
    pairs: dict[str, str] = {}
    for name, raw in as_mapping(value, key).items():
        field_id = _field_id(name, key)
        if field_id in pairs:
            raise ConfigError(join_key(key, field_id), "field id given twice")
        pairs[field_id] = _template_text(raw, join_key(key, field_id))
    return FrozenMapping(pairs.items())


def _principals(value: object, key: str) -> tuple[int | str, ...]:
    """User or group ids (ints) and names (strings); a single one counts as a list."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    result: list[int | str] = []
    for index, item in enumerate(items):
        item_key = f"{key}[{index}]"
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            result.append(item)
        elif isinstance(item, str) and item.strip():
            result.append(item.strip())
        else:
            raise ConfigError(item_key, f"must be an id number or a name (got {describe(item)})")
    return tuple(result)


def _share(value: object, key: str) -> ShareConfig:
    parsers: dict[str, Parse] = {"users": _principals, "groups": _principals}
    return ShareConfig(**section(value, key, parsers))


def _pattern(value: object, key: str) -> str:
    text = as_text(value, key)
    try:
        compiled = re.compile(text)
    except re.error as exc:
        raise ConfigError(
            key, f"is not a valid regular expression: {exc} (got {describe(text)})"
        ) from None
    clashes = sorted(BUILTIN_PLACEHOLDERS.intersection(compiled.groupindex))
    if clashes:
        raise ConfigError(
            key,
            f"named group (?P<{clashes[0]}>...) hides the built-in placeholder {{{clashes[0]}}};"
            " rename the group",
        )
    return text


def _rule_match(value: object, key: str) -> str:
    """A gitignore-style pattern, checked now so that a bad one is not found at upload time."""
    text = as_text(value, key)
    try:
        gitignore_match(text, "probe")
    except ValueError as exc:
        raise ConfigError(key, f"is not a valid pattern: {exc}") from None
    return text


_RULE_PARSERS: dict[str, Parse] = {
    "match": _rule_match,
    "name": optional(_record_name),
    "template": optional(_template),
    "share": optional(_share),
}


def _rules(value: object, key: str) -> tuple[RuleConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of rules (got {describe(value)})")
    rules: list[RuleConfig] = []
    for index, item in enumerate(value):
        item_key = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(item_key, f"must be a mapping with match: (got {describe(item)})")
        parsed = section(item, item_key, _RULE_PARSERS, {"match": '"room-3/**"'})
        rules.append(RuleConfig(**parsed))
    return tuple(rules)


def _record_templates(record: RecordConfig, key: str) -> Iterator[tuple[str, str]]:
    """Every (template, dotted key) in the record section, for placeholder checks."""
    yield record.name, join_key(key, "name")
    for field_id, text in record.template.items():
        yield text, f"{key}.template.{field_id}"
    for index, rule in enumerate(record.rules):
        rule_key = f"{key}.rules[{index}]"
        if rule.name is not None:
            yield rule.name, f"{rule_key}.name"
        for field_id, text in (rule.template or {}).items():
            yield text, f"{rule_key}.template.{field_id}"


def _parse_record(value: object, key: str, base: Path) -> RecordConfig:
    parsers: dict[str, Parse] = {
        "name": _record_name,
        "pattern": optional(_pattern),
        "template": _template,
        "template_id": optional(whole_number(1)),
        "share": _share,
        "sidecar": as_bool,
        "rules": _rules,
    }
    record = RecordConfig(**section(value, key, parsers))
    groups = set(re.compile(record.pattern).groupindex) if record.pattern else set()
    known = BUILTIN_PLACEHOLDERS | groups
    for text, text_key in _record_templates(record, key):
        check_template(text, text_key, known)
    return record


# --------------------------------------------------------------------------- the rest


def _parse_after_upload(value: object, key: str, base: Path) -> AfterUploadConfig:
    parsers: dict[str, Parse] = {
        "action": one_of("keep", "move", "delete"),
        "move_to": optional(path_parser(base)),
        "failed_to": optional(path_parser(base)),
        "keep_for": optional(duration(0.0, above=True)),
    }
    after = AfterUploadConfig(**section(value, key, parsers))
    if after.action == "move" and after.move_to is None:
        raise ConfigError(join_key(key, "move_to"), f"required when {key}.action is move")
    if after.action == "delete" and after.keep_for is not None:
        raise ConfigError(
            join_key(key, "keep_for"),
            f"has no effect when {key}.action is delete (the source goes at once);"
            " use keep or move",
        )
    return after


def _parse_ledger(value: object, key: str, base: Path) -> LedgerConfig:
    parsers: dict[str, Parse] = {"path": path_parser(base), "backups": whole_number(0)}
    return LedgerConfig(**section(value, key, parsers))


def _parse_log(value: object, key: str, base: Path) -> LogConfig:
    parsers: dict[str, Parse] = {
        "format": one_of("json", "console", "auto"),
        "level": one_of("debug", "info", "warning", "error"),
        "redact_paths": as_bool,
    }
    return LogConfig(**section(value, key, parsers))


_LISTEN_RE = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})")


def _listen(value: object, key: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``[V6]:PORT``; null switches the endpoint off."""
    if value is None:
        return None
    match = _LISTEN_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ConfigError(
            key,
            'must be "HOST:PORT" with a port from 1 to 65535, like "127.0.0.1:9465" or'
            f' "[::1]:9465", or null for off (got {describe(value)})',
        )
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ConfigError(key, f"has an invalid IPv6 address (got {describe(value)})") from None
    return match["v6"] or match["host"], int(match["port"])


def _parse_status(value: object, key: str, base: Path) -> StatusConfig:
    parsers: dict[str, Parse] = {"listen": _listen, "token_file": optional(path_parser(base))}
    return StatusConfig(**section(value, key, parsers))


CLEARTEXT_DETAIL = (
    "valt.url is http:// to a host that is not this machine: the password and every"
    " recording cross the network in clear text; use https://"
)


def cleartext_password(valt: ValtConfig) -> bool:
    """Whether the password would cross the network unencrypted (issue 11, finding 5)."""
    parts = urllib.parse.urlsplit(valt.url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _webhook(value: object, key: str) -> str | None:
    """An http(s) URL; never echoed, since such URLs often carry their secret."""
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else ""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or " " in text:
        raise ConfigError(key, "must be an http or https URL, or null (value not shown)")
    return text


def _parse_alerts(value: object, key: str, base: Path) -> AlertsConfig:
    parsers: dict[str, Parse] = {"webhook": _webhook, "backlog_age": duration(0.0, above=True)}
    return AlertsConfig(**section(value, key, parsers))


# --------------------------------------------------------------------------- whole config

_SECTIONS: dict[str, Callable[[object, str, Path], Any]] = {
    "valt": _parse_valt,
    "watch": _parse_watch,
    "upload": _parse_upload,
    "record": _parse_record,
    "after_upload": _parse_after_upload,
    "ledger": _parse_ledger,
    "log": _parse_log,
    "status": _parse_status,
    "alerts": _parse_alerts,
}


def _excluded(relative: Path, patterns: Iterable[str]) -> bool:
    """Whether any folder name along ``relative`` matches an exclude pattern (case-insensitive)."""
    return any(
        fnmatch.fnmatchcase(part.lower(), pattern.lower())
        for part in relative.parts
        for pattern in patterns
    )


def _check_outside_watch(path: Path | None, key: str, watch: WatchConfig) -> None:
    """Files moved into a watched folder would be found and handled again."""
    if path is None:
        return
    for index, root in enumerate(watch.paths):
        inside = path == root or (
            watch.recursive
            and path.is_relative_to(root)
            and not _excluded(path.relative_to(root), watch.exclude)
        )
        if inside:
            raise ConfigError(
                key,
                f"{path} is inside watch.paths[{index}] ({root}), so files put there would be"
                " picked up again; choose a folder outside it or one that watch.exclude names",
            )


def parse_config(data: object, base_dir: Path, source: Path | None = None) -> Config:
    """Validate parsed YAML ``data``; relative paths are taken from ``base_dir``.

    Raises ConfigError naming the dotted key of the first problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            "",
            "the configuration must be a mapping with sections such as valt: and watch:"
            f" (got {describe(data)})",
        )
    for name in data:
        if name not in _SECTIONS:
            raise unknown_key("", name, _SECTIONS)
    sections = {name: parse(data.get(name), name, base_dir) for name, parse in _SECTIONS.items()}
    config = Config(**sections, source=source)
    _check_outside_watch(config.after_upload.move_to, "after_upload.move_to", config.watch)
    _check_outside_watch(config.after_upload.failed_to, "after_upload.failed_to", config.watch)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_label(key)}", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _read_yaml(file: Path) -> object:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{file}: no such file") from None
    except IsADirectoryError:
        raise ConfigError("", f"{file}: is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{file}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError("", f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except RecursionError:  # PyYAML parses nesting by recursion: "[[[[..." (issue 11)
        raise ConfigError("", f"{file}: YAML error: {_TOO_DEEP}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        start = exc.context_mark
        if exc.context and start is not None and mark is not None and start.line != mark.line:
            problem += f" ({_one_line(exc.context)} at line {start.line + 1})"
        raise ConfigError("", f"{file}: YAML error{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{file}: YAML error: {_one_line(str(exc))}") from None
    if _nested_deeper(data, MAX_DEPTH):
        raise ConfigError("", f"{file}: {_TOO_DEEP}")
    return data


MAX_DEPTH = 32  # the deepest real configuration is 5 levels (record.rules[0].share.users)
_TOO_DEEP = (
    f"lists and mappings nested more than {MAX_DEPTH} levels deep (or an &anchor used"
    " inside itself); a configuration needs a few levels"
)


def _nested_deeper(data: object, limit: int) -> bool:
    """Whether ``data`` nests lists and mappings past ``limit`` (or holds itself).

    Without recursion, and each node once: YAML aliases share nodes, so a "billion
    laughs" document is small here, and an anchor inside itself makes a cycle.
    """
    heights: dict[int, int] = {}
    in_progress: set[int] = set()
    stack: list[tuple[object, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = list(node.values()) if isinstance(node, dict) else node
        key = id(node)
        if finished:
            in_progress.discard(key)
            heights[key] = 1 + max((heights.get(id(child), 0) for child in children), default=0)
            if heights[key] > limit:
                return True
        elif key in in_progress:
            return True  # a cycle: deeper than any limit
        elif key not in heights:
            in_progress.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return False


def _check_ca_file(path: Path | None, key: str) -> None:
    """The CA file must load now: once it failed every job as internal_error (issue 11)."""
    if path is None:
        return
    fix = "give the CA certificate that signed the server's, in PEM form"
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(key, f"{path} holds no certificate in PEM form; {fix}") from None
    except FileNotFoundError:
        raise ConfigError(key, f"{path}: no such file; {fix}") from None
    except IsADirectoryError:
        raise ConfigError(key, f"{path} is a folder, not a file; {fix}") from None
    except OSError as exc:
        raise ConfigError(key, f"{path}: cannot read: {exc.strerror or exc}") from None


def load_config(path: Path | str) -> Config:
    """Read and validate the YAML file at ``path``; relative paths in it start at its folder.

    Unlike :func:`parse_config`, this also loads ``valt.ca_file``, so that a missing or
    unreadable CA is a configuration error (exit 2) and not every job's failure.
    """
    file = Path(path).absolute()
    config = parse_config(_read_yaml(file), file.parent, source=file)
    _check_ca_file(config.valt.ca_file, "valt.ca_file")
    return config


# Resolved in credentials.py, which reads the environment; re-exported for callers.
from ingestd.config.credentials import (  # noqa: E402
    config_path_from,
    resolve_password,
    resolve_status_token,
)
