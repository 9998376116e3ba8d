"""Sizes and durations as people write them in a config file, and back again for display.

Sizes: an integer (bytes) or a string such as ``8MiB``, ``512KiB``, ``20MB`` or
``1.5GiB``; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024.
Durations: a number of seconds or a string such as ``10s``, ``5m``, ``6h``, ``30d``,
``1h30m`` or ``250ms``. YAML booleans are never numbers here.
"""

from __future__ import annotations

import datetime
import json
import math
import re

from ingestd.errors import ConfigError

__all__ = ["describe", "format_duration", "format_size", "parse_duration", "parse_size"]

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)

_DURATION_UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
# "ms" and "min" come before "m" so that the alternation does not stop early.
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|min|s|m|h|d|w)\s*", re.IGNORECASE)
_PLAIN_NUMBER_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*")

_SIZE_HINT = "must be a size like 8MiB, 512KiB or 20MB"
_DURATION_HINT = "must be a duration like 10s, 5m, 6h or 30d"


def describe(value: object) -> str:
    """Render a config value for an error message: one line, YAML-ish, bounded length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 80 else value[:77] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def parse_size(value: object, key: str) -> int:
    """Return ``value`` as a number of bytes, or raise ConfigError naming ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"{_SIZE_HINT} (got {describe(value)})")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(key, f"must not be negative (got {describe(value)})")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is not None and match.group(2).lower() in _SIZE_UNITS:
            number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            return round(number)
    raise ConfigError(key, f"{_SIZE_HINT} (got {describe(value)})")


def parse_duration(value: object, key: str) -> float:
    """Return ``value`` as seconds, or raise ConfigError naming ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"{_DURATION_HINT} (got {describe(value)})")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(key, f"{_DURATION_HINT} (got {describe(value)})")
        if value < 0:
            raise ConfigError(key, f"must not be negative (got {describe(value)})")
        return float(value)
    if isinstance(value, str):
        seconds = _duration_from_text(value)
        if seconds is not None:
            return seconds
    raise ConfigError(key, f"{_DURATION_HINT} (got {describe(value)})")


def _duration_from_text(text: str) -> float | None:
    """Seconds in ``text`` ("90", "1h30m", "250ms"), or None when it is not a duration."""
    plain = _PLAIN_NUMBER_RE.fullmatch(text)
    if plain is not None:
        return float(plain.group(1))
    stripped = text.strip()
    position = 0
    total = 0.0
    while position < len(stripped):
        part = _DURATION_PART_RE.match(stripped, position)
        if part is None:
            return None
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2).lower()]
        position = part.end()
    return total if stripped else None


def format_size(n: int) -> str:
    """Human-readable binary size: ``8.0 MiB``, ``512 B``."""
    if abs(n) < 1024:
        return f"{n} B"
    amount = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    """Human-readable duration in its largest fitting unit: ``3 h``, ``2 min``, ``40 s``."""
    magnitude = abs(seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if magnitude >= size:
            return f"{_trim(seconds / size)} {unit}"
    if magnitude == 0:
        return "0 s"
    return f"{_trim(seconds * 1000)} ms"


def _trim(amount: float) -> str:
    """One decimal at most, and none when it would be ``.0``."""
    text = f"{amount:.1f}"
    return text[:-2] if text.endswith(".0") else text


def iso_time(at: float) -> str:
    """A wall-clock time as people and scripts read it: ``2026-12-01T05:45:45Z``."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
