"""``{stem}``-style placeholders in record names and template values.

A template is a ``str.format`` string restricted to plain names: ``{stem}``,
``{size}``, ``{mtime:%Y-%m-%d}``. Built-in names describe the file; the named
groups of ``record.pattern`` add more. ``{mtime}`` and ``{now}`` are datetimes
whose format spec is a strftime format. Names are checked when the config is
loaded, so rendering never meets an unknown one from a valid config.
"""

from __future__ import annotations

import datetime
import re
import string
from collections.abc import Collection, Iterator, Mapping

from ingestd.errors import ConfigError
from ingestd.units import describe

__all__ = [
    "BUILTIN_PLACEHOLDERS",
    "DATETIME_PLACEHOLDERS",
    "DEFAULT_DATETIME_FORMAT",
    "check_template",
    "placeholder_names",
    "render",
]

#: Placeholders every template may use. ``stem``/``name``/``ext``/``parent``/``relpath``
#: are text, ``size`` is bytes (int), ``mtime``/``now`` are local datetimes.
BUILTIN_PLACEHOLDERS: frozenset[str] = frozenset(
    {"stem", "name", "ext", "parent", "relpath", "size", "mtime", "now"}
)
#: Placeholders whose value is a datetime and whose format spec is a strftime format.
DATETIME_PLACEHOLDERS: frozenset[str] = frozenset({"mtime", "now"})
DEFAULT_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SAMPLE_DATETIME = datetime.datetime(2024, 1, 31, 12, 30, 45)

_Field = tuple[str, str]  # name, format spec


def _fields(template: str, key: str) -> Iterator[tuple[str, _Field | None]]:
    """Yield (literal text, placeholder or None) pairs, refusing anything but plain names."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            key, f"bad placeholder syntax: {exc} (got {describe(template)})"
        ) from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            yield literal, None
            continue
        if not _NAME_RE.fullmatch(name):
            shown = "{" + name + "}"
            raise ConfigError(
                key,
                f"placeholder {shown} must be a plain name like {{stem}}"
                f" (got {describe(template)})",
            )
        if "{" in (spec or ""):
            raise ConfigError(
                key, f"placeholder {{{name}}} may not nest placeholders in its format"
            )
        if conversion is not None:
            raise ConfigError(
                key, f"placeholder {{{name}!{conversion}}}: conversions are not supported"
            )
        yield literal, (name, spec or "")


def placeholder_names(template: str, key: str) -> set[str]:
    """The placeholder names ``template`` uses; a syntax error raises ConfigError naming ``key``."""
    return {field[0] for _, field in _fields(template, key) if field is not None}


def check_template(template: str, key: str, known: Collection[str]) -> None:
    """Refuse placeholders outside ``known`` and format specs that cannot apply to their value.

    Names in DATETIME_PLACEHOLDERS take strftime formats, ``size`` takes int formats,
    every other name is text.
    """
    for _, field in _fields(template, key):
        if field is None:
            continue
        name, spec = field
        if name not in known:
            listing = ", ".join(sorted(known))
            raise ConfigError(key, f"unknown placeholder {{{name}}} (known: {listing})")
        _check_spec(name, spec, key)


def _check_spec(name: str, spec: str, key: str) -> None:
    sample: object = 0 if name == "size" else ""
    try:
        if name in DATETIME_PLACEHOLDERS:
            _SAMPLE_DATETIME.strftime(spec)
        else:
            format(sample, spec)
    except ValueError as exc:
        raise ConfigError(key, f"placeholder {{{name}:{spec}}}: {exc}") from None


def render(template: str, values: Mapping[str, object]) -> str:
    """Fill ``template`` from ``values``.

    Datetimes format with the spec as a strftime format (default
    DEFAULT_DATETIME_FORMAT). A name missing from ``values`` or mapped to None (an
    optional regex group that did not take part) renders as an empty string.
    """
    parts: list[str] = []
    for literal, field in _fields(template, "template"):
        parts.append(literal)
        if field is None:
            continue
        name, spec = field
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, datetime.date):
            parts.append(value.strftime(spec or DEFAULT_DATETIME_FORMAT))
        else:
            parts.append(format(value, spec))
    return "".join(parts)
