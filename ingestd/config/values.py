"""Generic value parsers for the configuration: the building blocks of every section.

Each parser takes ``(value, dotted_key)`` and returns the parsed value or raises
:class:`ConfigError` naming the key and what it got; ``section()`` runs a table of
them over one mapping and refuses unknown keys with a did-you-mean hint.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ingestd.errors import ConfigError
from ingestd.units import describe, format_duration, parse_duration

Parse = Callable[[object, str], Any]


EMPTY: Mapping[str, str] = MappingProxyType({})


def join_key(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def key_label(name: object) -> str:
    """A mapping key as shown in a dotted path; odd keys are quoted to keep messages one line."""
    if isinstance(name, str) and name and name.isprintable() and " " not in name:
        return name
    return describe(name)


def as_mapping(value: object, key: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a mapping of keys to values (got {describe(value)})")
    return value


def unknown_key(parent: str, name: object, known: Iterable[str]) -> ConfigError:
    names = list(known)
    close = difflib.get_close_matches(name, names, n=1) if isinstance(name, str) else []
    hint = f"did you mean {close[0]}?" if close else "known keys: " + ", ".join(names)
    return ConfigError(join_key(parent, key_label(name)), f"unknown key ({hint})")


def section(
    value: object, key: str, parsers: Mapping[str, Parse], required: Mapping[str, str] = EMPTY
) -> dict[str, Any]:
    """Parse one mapping with a key -> parser table; ``required`` maps key -> example."""
    values: dict[str, Any] = {}
    for name, raw in as_mapping(value, key).items():
        parse = parsers.get(name) if isinstance(name, str) else None
        if parse is None:
            raise unknown_key(key, name, parsers)
        values[name] = parse(raw, join_key(key, name))
    for name, example in required.items():
        if name not in values:
            raise ConfigError(join_key(key, name), f"is required, e.g. {name}: {example}")
    return values


def optional(parse: Parse) -> Parse:
    def parse_optional(value: object, key: str) -> Any:
        return None if value is None else parse(value, key)

    return parse_optional


def as_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(key, f"must be true or false (got {describe(value)})")


def whole_number(lowest: int, highest: int | None = None) -> Parse:
    def parse_whole(value: object, key: str) -> int:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= lowest
            and (highest is None or value <= highest)
        ):
            return value
        wanted = f"from {lowest} to {highest}" if highest is not None else f"of at least {lowest}"
        raise ConfigError(key, f"must be a whole number {wanted} (got {describe(value)})")

    return parse_whole


def as_text(value: object, key: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ConfigError(key, f"must be a non-empty string (got {describe(value)})")


def one_of(*choices: str) -> Parse:
    def parse_choice(value: object, key: str) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ConfigError(key, f"must be one of {', '.join(choices)} (got {describe(value)})")

    return parse_choice


def duration(minimum: float = 0.0, *, above: bool = False) -> Parse:
    """A duration of at least ``minimum`` seconds (more than it, when ``above``)."""

    def parse_bounded_duration(value: object, key: str) -> float:
        seconds = parse_duration(value, key)
        if seconds < minimum or (above and seconds == minimum):
            relation = "more than" if above else "at least"
            bound = format_duration(minimum)
            raise ConfigError(key, f"must be {relation} {bound} (got {describe(value)})")
        return seconds

    return parse_bounded_duration


def string_list(value: object, key: str, *, allow_empty: bool) -> tuple[str, ...]:
    """A list of non-empty strings; a single string counts as a one-item list."""
    if value is None and allow_empty:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(key, f"must be a list of strings (got {describe(value)})")
    if not items and not allow_empty:
        raise ConfigError(key, "must list at least one entry (got an empty list)")
    return tuple(as_text(item, f"{key}[{index}]") for index, item in enumerate(items))


def resolve_path(base: Path, text: str, key: str) -> Path:
    """``text`` as a path; ``~`` expands, relative paths are taken from ``base``."""
    if "\0" in text:
        raise ConfigError(key, "must be a path (got a string with a NUL byte)")
    try:
        path = Path(text).expanduser()
    except RuntimeError:
        raise ConfigError(key, f"cannot expand ~ (got {describe(text)})") from None
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def path_parser(base: Path) -> Parse:
    def parse_path(value: object, key: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"must be a path (got {describe(value)})")
        return resolve_path(base, value, key)

    return parse_path


def name_only(value: object, key: str) -> str:
    """A file or credential name: text without a path separator."""
    text = as_text(value, key)
    if "/" in text or text in (".", ".."):
        raise ConfigError(key, f"must be a name, not a path (got {describe(value)})")
    return text


# --- shared with sidecars (intake/sidecar.py), which word their errors differently ---------

Principals = tuple[int | str, ...]


def field_id(raw: object) -> str | None:
    """A template field id: YAML gives ints or digit strings, and 12 and "12" are both "12"."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return str(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return str(int(raw.strip()))
    return None


def template_fields(
    items: Mapping[Any, object],
    bad_id: Callable[[object], Exception],
    text: Callable[[object, str], str],
    twice: Callable[[str], Exception] | None = None,
) -> dict[str, str]:
    """A template's ``field id -> text``, the values parsed by ``text(value, field_id)``.

    ``bad_id(raw)`` is raised for an id that is not a number; ``twice(field_id)``
    for one given twice (as 12 and "12"), or the last one wins when it is None.
    """
    fields: dict[str, str] = {}
    for raw_id, raw in items.items():
        parsed_id = field_id(raw_id)
        if parsed_id is None:
            raise bad_id(raw_id)
        if twice is not None and parsed_id in fields:
            raise twice(parsed_id)
        fields[parsed_id] = text(raw, parsed_id)
    return fields


def principals(value: object, refuse: Callable[[int, object], Exception]) -> Principals:
    """User or group ids (whole numbers) and names (text); a single one counts as a list.

    ``refuse(index, item)`` is raised for an item that is neither.
    """
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    result: list[int | str] = []
    for index, item in enumerate(items):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            result.append(item)
        elif isinstance(item, str) and item.strip():
            result.append(item.strip())
        else:
            raise refuse(index, item)
    return tuple(result)
