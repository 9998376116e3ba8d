"""One parser per configuration section, and the table of them that ``load.py`` runs.

Every section is parsed by the same small table-driven ``section()``
(``config/values.py``): a table maps each key to a parser ``(value, dotted_key)
-> parsed``; unknown keys are refused with a did-you-mean hint; checks that span
keys run after the table. Checks that span sections run in ``load.py``. Parsing
does no I/O. The record: section, the largest, is in ``config/record.py``; the ledger:
section in ``config/ledger_section.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingestd.config.ledger_section import parse_ledger
from ingestd.config.record import parse_record
from ingestd.config.schema import (
    MIN_CHUNK_SIZE,
    AfterUploadConfig,
    AlertsConfig,
    BandwidthLimit,
    BandwidthWindow,
    LogConfig,
    StatusConfig,
    UploadConfig,
    ValtConfig,
    WatchConfig,
)
from ingestd.config.values import (
    Parse,
    as_bool,
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
    whole_number,
)
from ingestd.errors import ConfigError
from ingestd.units import describe, format_duration, parse_size

__all__ = ["SECTIONS", "SectionParser"]

# A section's parser: (value, dotted key, folder that relative paths start at) -> section.
SectionParser = Callable[[object, str, Path], Any]

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
    """Each entry a path, or ``{path: PATH, name: NAME}``; returns (path, name or None)s."""

    def parse_watch_paths(value: object, key: str) -> tuple[tuple[Path, str | None], ...]:
        items = [value] if isinstance(value, str | dict) else value
        if not isinstance(items, list):
            raise ConfigError(key, f"must be a list of folders (got {describe(value)})")
        if not items:
            raise ConfigError(key, "must list at least one entry (got an empty list)")
        return tuple(_watch_folder(base, item, f"{key}[{i}]") for i, item in enumerate(items))

    return parse_watch_paths


def _watch_folder(base: Path, value: object, key: str) -> tuple[Path, str | None]:
    if not isinstance(value, dict):
        return resolve_path(base, as_text(value, key), key), None
    fields = section(
        value,
        key,
        {"path": path_parser(base), "name": name_only},
        {"path": "/mnt/export", "name": "export"},
    )
    return fields["path"], fields["name"]


def _patterns(*, allow_empty: bool) -> Parse:
    def parse_patterns(value: object, key: str) -> tuple[str, ...]:
        return string_list(value, key, allow_empty=allow_empty)

    return parse_patterns


def _check_watch_paths(watch: WatchConfig) -> None:
    """Refuse a folder listed twice, or (recursive) inside another: files would be seen
    twice; and a name given to two folders."""
    for index, name in enumerate(watch.names):
        if name is not None and name in watch.names[:index]:
            other_index = watch.names.index(name)
            raise ConfigError(
                f"watch.paths[{index}].name",
                f"{name!r} is already the name of watch.paths[{other_index}]: names must differ",
            )
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
        "require_mount": as_bool,
    }
    fields = section(value, key, parsers, {"paths": "[/srv/capture/export]"})
    folders = fields.pop("paths")
    names = tuple(name for _path, name in folders)
    watch = WatchConfig(paths=tuple(path for path, _name in folders), names=names, **fields)
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


SECTIONS: dict[str, SectionParser] = {
    "valt": _parse_valt,
    "watch": _parse_watch,
    "upload": _parse_upload,
    "record": parse_record,
    "after_upload": _parse_after_upload,
    "ledger": parse_ledger,
    "log": _parse_log,
    "status": _parse_status,
    "alerts": _parse_alerts,
}
