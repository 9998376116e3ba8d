"""What a file's record looks like on Valt: its name, template fields and sharing.

Built from ``record:`` in the configuration: placeholders filled from the
file (``{stem}``, ``{mtime:%Y-%m-%d}``...), the named groups of
``record.pattern``, and the first matching ``record.rules`` entry.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ingestd.config import RecordConfig, ShareConfig
from ingestd.matching import gitignore_match
from ingestd.placeholders import render


@dataclass(frozen=True, slots=True)
class RecordMeta:
    name: str
    template: dict[str, str] = field(default_factory=dict)
    share: dict[str, list[int]] = field(default_factory=lambda: {"users": [], "groups": []})


def relative_path(path: Path, root: Path) -> PurePath:
    try:
        return path.relative_to(root)
    except ValueError:
        return PurePath(path.name)


def placeholder_values(
    path: Path, root: Path, size: int, mtime_ns: int, pattern: re.Pattern[str] | None
) -> dict[str, object]:
    """The values placeholders take for one file."""
    rel = relative_path(path, root)
    parent = rel.parent.as_posix()
    values: dict[str, object] = {
        "stem": path.stem,
        "name": path.name,
        "ext": path.suffix.lstrip("."),
        "parent": "" if parent == "." else parent,
        "relpath": rel.as_posix(),
        "size": size,
        "mtime": dt.datetime.fromtimestamp(mtime_ns / 1e9),
        "now": dt.datetime.now(),
    }
    if pattern is not None:
        match = pattern.search(rel.as_posix())
        if match is not None:
            values.update(match.groupdict())
    return values


def share_ids(
    share: ShareConfig, names: Mapping[str, Mapping[str, int]] | None = None
) -> dict[str, list[int]]:
    """Numeric ids for ``share``; names are looked up in ``names`` (resolved at start-up)."""
    result: dict[str, list[int]] = {"users": [], "groups": []}
    for kind, items in (("users", share.users), ("groups", share.groups)):
        for item in items:
            if isinstance(item, int):
                result[kind].append(item)
            elif names is not None and item in names.get(kind, {}):
                result[kind].append(names[kind][item])
    return result


class RecordNamer:
    """Turns a file into its :class:`RecordMeta` according to ``record:``."""

    def __init__(
        self, config: RecordConfig, share_names: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        self.config = config
        self.pattern = re.compile(config.pattern) if config.pattern else None
        self.share_names = share_names

    def meta_for(self, path: Path, root: Path, size: int, mtime_ns: int) -> RecordMeta:
        values = placeholder_values(path, root, size, mtime_ns, self.pattern)
        name_template, template, share = self.config.name, self.config.template, self.config.share
        rel = str(values["relpath"])
        for rule in self.config.rules:
            if gitignore_match(rule.match, rel):
                name_template = rule.name or name_template
                template = rule.template if rule.template is not None else template
                share = rule.share or share
                break
        name = render(name_template, values).strip() or path.stem
        fields = {key: render(value, values) for key, value in template.items()}
        return RecordMeta(name=name, template=fields, share=share_ids(share, self.share_names))
