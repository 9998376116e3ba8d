"""The record: section: upload names, template fields, shares and per-path rules.

Templates are checked here against the placeholders they may use (the built-in
ones and ``record.pattern``'s named groups), so that a typo fails at start-up
and not at upload time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ingestd.config.patterns import gitignore_match
from ingestd.config.placeholders import BUILTIN_PLACEHOLDERS, check_template, placeholder_names
from ingestd.config.schema import (
    FrozenMapping,
    RecordConfig,
    RuleConfig,
    ShareConfig,
)
from ingestd.config.values import (
    Parse,
    Principals,
    as_bool,
    as_mapping,
    as_text,
    join_key,
    key_label,
    optional,
    principals,
    section,
    template_fields,
    whole_number,
)
from ingestd.errors import ConfigError
from ingestd.units import describe

__all__ = ["parse_record"]

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


def _template(value: object, key: str) -> FrozenMapping:
    fields = template_fields(
        as_mapping(value, key),
        bad_id=lambda raw: ConfigError(
            join_key(key, key_label(raw)),
            f"field ids must be numbers such as 12 (got {describe(raw)})",
        ),
        text=lambda raw, field_id: _template_text(raw, join_key(key, field_id)),
        twice=lambda field_id: ConfigError(join_key(key, field_id), "field id given twice"),
    )
    return FrozenMapping(fields.items())


def _principals(value: object, key: str) -> Principals:
    return principals(
        value,
        lambda index, item: ConfigError(
            f"{key}[{index}]", f"must be an id number or a name (got {describe(item)})"
        ),
    )


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


def parse_record(value: object, key: str, base: Path) -> RecordConfig:
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
