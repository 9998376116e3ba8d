"""What a file's record looks like on Valt: its name, template fields and sharing.

Built from ``record:`` in the configuration, in this order, each over the last:

1. ``record.name`` / ``template`` / ``share``, whose placeholders are filled
   from the file (``{stem}``, ``{mtime:%Y-%m-%d}``...) and the named groups of
   ``record.pattern`` where it matches the relative path;
2. the first ``record.rules`` entry whose ``match`` (gitignore-style, ``**``
   spans folders) fits the relative path: its name, template and share,
   where given, replace the ones above (placeholders filled the same way);
3. the video's sidecar (``record.sidecar``, see :mod:`ingestd.intake.sidecar`): its
   ``name`` replaces the name, its ``template`` fields are set over the
   others (fields it does not name stay), its ``share.users`` /
   ``share.groups``, where given, replace that kind. Sidecar values are
   literal text: no placeholders.

Share names become ids through a :class:`~ingestd.valt.shares.ShareDirectory`.
A problem that belongs to one file (a malformed sidecar, a name in it the
server does not know) fails that job, never the daemon.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ingestd.aio import blocking
from ingestd.config.patterns import gitignore_match
from ingestd.config.placeholders import render
from ingestd.config.schema import RecordConfig, ShareConfig
from ingestd.disk.judged import OpenRule
from ingestd.errors import PermanentError, RetryableError, ShareNameError
from ingestd.intake.sidecar import Sidecar, examine_sidecar
from ingestd.valt.shares import KINDS, ShareDirectory


@dataclass(frozen=True, slots=True)
class RecordMeta:
    name: str
    template: dict[str, str] = field(default_factory=dict)
    share: dict[str, list[int]] = field(default_factory=lambda: {"users": [], "groups": []})


@dataclass(frozen=True, slots=True)
class ShareChoice:
    """Who one kind of share (users or groups) names, before names become ids."""

    kind: str
    items: tuple[int | str, ...]
    key: str  # where they come from, for messages: ``record.share.users``, ``sidecar X: ...``
    from_sidecar: bool


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """A file's record as the rules and its sidecar make it, share names not yet ids."""

    name: str
    template: dict[str, str]
    share: dict[str, ShareChoice]
    sidecar: Sidecar | None


@dataclass(frozen=True, slots=True)
class _Chosen:
    """The configuration that applies to one file: the defaults, or its rule's."""

    name: str
    template: Mapping[str, str]
    share: ShareConfig
    share_key: str  # dotted key of ``share``, for error messages


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


class RecordNamer:
    """Turns a file into its :class:`RecordMeta` according to ``record:``.

    ``settle`` (``watch.settle``) guards sidecars at upload time too: one that
    changed since the settle loop looked is not used half-written.
    """

    def __init__(
        self,
        config: RecordConfig,
        directory: ShareDirectory | None = None,
        *,
        settle: float = 0.0,
        rule: OpenRule | None = None,
    ) -> None:
        self.config = config
        self.rule = rule or OpenRule()  # how sidecars are opened (judged.py)
        self.pattern = re.compile(config.pattern) if config.pattern else None
        self.directory = directory or ShareDirectory(None)
        self.settle = settle

    def choose(self, relpath: str) -> _Chosen:
        """The defaults, with the first matching rule's settings over them."""
        config = self.config
        for index, rule in enumerate(config.rules):
            if gitignore_match(rule.match, relpath):
                return _Chosen(
                    name=rule.name or config.name,
                    template=rule.template if rule.template is not None else config.template,
                    share=rule.share if rule.share is not None else config.share,
                    share_key=(
                        f"record.rules[{index}].share" if rule.share is not None else "record.share"
                    ),
                )
        return _Chosen(config.name, config.template, config.share, "record.share")

    async def meta_for(self, path: Path, root: Path, size: int, mtime_ns: int) -> RecordMeta:
        """The record for one file. PermanentError (``bad_sidecar``,
        ``unknown_share_name``) fails its job; RetryableError (``sidecar_unsettled``,
        the server) tries again later."""
        draft = await self.draft_for(path, root, size, mtime_ns)
        share = {kind: await self.share_ids(draft.share[kind]) for kind in KINDS}
        return RecordMeta(name=draft.name, template=draft.template, share=share)

    async def draft_for(self, path: Path, root: Path, size: int, mtime_ns: int) -> RecordDraft:
        """Name, template and share choices for one file, without asking the server (the
        uploads and ``ingestd plan`` both start here). Raises as :meth:`meta_for` does for
        its sidecar."""
        values = placeholder_values(path, root, size, mtime_ns, self.pattern)
        chosen = self.choose(str(values["relpath"]))
        name = render(chosen.name, values).strip() or path.stem
        fields = {key: render(value, values) for key, value in chosen.template.items()}
        sidecar = await blocking(self._sidecar, path) if self.config.sidecar else None
        if sidecar is not None:
            name = sidecar.name or name
            fields.update(sidecar.template)
        share = {kind: _share_choice(kind, chosen, sidecar) for kind in KINDS}
        return RecordDraft(name=name, template=fields, share=share, sidecar=sidecar)

    def _sidecar(self, video: Path) -> Sidecar | None:
        verdict = examine_sidecar(video, self.settle, time.time(), self.rule)
        if verdict.wait is not None:
            raise RetryableError(verdict.wait, reason="sidecar_unsettled")
        if verdict.error is not None:
            raise PermanentError(
                f"{verdict.error}; fix it, then `ingestd retry`", reason="bad_sidecar"
            )
        return verdict.sidecar

    async def share_ids(self, choice: ShareChoice) -> list[int]:
        """The ids of one share choice; a name the server does not know fails the job."""
        try:
            return await self.directory.ids(choice.kind, choice.items)
        except ShareNameError as exc:
            reason = "bad_sidecar" if choice.from_sidecar else "unknown_share_name"
            raise PermanentError(f"{choice.key}: {exc}", reason=reason) from None


def _share_choice(kind: str, chosen: _Chosen, sidecar: Sidecar | None) -> ShareChoice:
    """A sidecar's ``share.KIND``, where it names one, replaces the configuration's."""
    from_sidecar: Iterable[int | str] | None = getattr(sidecar, kind, None)
    if sidecar is not None and from_sidecar is not None:
        return ShareChoice(
            kind, tuple(from_sidecar), f"sidecar {sidecar.path.name}: share.{kind}", True
        )
    return ShareChoice(
        kind, tuple(getattr(chosen.share, kind)), f"{chosen.share_key}.{kind}", False
    )
