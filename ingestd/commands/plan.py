"""``ingestd plan``: a dry run. What the daemon would do with every file present now.

Each file under the watch folders is to be uploaded (with the record name,
template and share its rules and sidecar resolve to), waits (and why), is
skipped (and why), or would fail (a malformed sidecar, a share name the
server does not know). The verdicts come from the intake's own code (the
walker, the path filter, the finished checks, the duplicate test, the record
namer), so plan and daemon never disagree.

Nothing is written: the ledger is opened read-only where one exists (never
created), and the server is only asked to log in and list users and groups,
when a share name must become an id. Without the server everything is still
listed; the names are then said to be unresolved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from ingestd.commands.common import advice_names, load
from ingestd.commands.exits import EXIT_OK
from ingestd.config.credentials import resolve_password
from ingestd.config.patterns import PathFilter
from ingestd.config.schema import Config
from ingestd.disk.judged import OpenRule, snapshot
from ingestd.errors import AuthFailed, FileRefused, PermanentError, RetryableError, ValtError
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.identity import full_sha256
from ingestd.intake.ready import compares_with, twin_outcome
from ingestd.intake.settle import judge_settled
from ingestd.intake.sidecar import sidecar_candidates
from ingestd.intake.waiting import SETTLED, Snap, as_snap, problem
from ingestd.intake.walk import iter_file_entries
from ingestd.ledger.api import JobLedger, open_ledger
from ingestd.ledger.model import Known, State
from ingestd.logs import configure_logging, redact_url, register_secret
from ingestd.units import format_duration
from ingestd.upload.naming import RecordDraft, RecordNamer, ShareChoice
from ingestd.valt.connect import client_for
from ingestd.valt.shares import KINDS, ShareDirectory

UPLOAD, WAIT, SKIP, FAIL = "upload", "wait", "skip", "fail"
ACTIONS = (UPLOAD, WAIT, SKIP, FAIL)
IN_FLIGHT = (State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING)


@dataclass
class Entry:
    """One file and what the daemon would do with it."""

    path: str
    root: str
    action: str
    why: str | None = None
    job: int | None = None
    draft: RecordDraft | None = None
    share: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_dict(self, template_id: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "action": self.action}
        if self.why is not None:
            out["why"] = self.why
        if self.job is not None:
            out["job"] = self.job
        if self.draft is not None:
            out["record"] = {
                "name": self.draft.name,
                "template_id": template_id,
                "template": self.draft.template,
                "share": self.share,
                "sidecar": None if self.draft.sidecar is None else str(self.draft.sidecar.path),
            }
        return out


@dataclass
class Plan:
    entries: list[Entry] = field(default_factory=list)
    folders: list[dict[str, str]] = field(default_factory=list)
    ledger: str | None = None
    shares_problem: str | None = None


class Planner:
    """Walks the watch folders and judges each file as the intake would, writing nothing."""

    def __init__(self, config: Config, ledger: JobLedger | None, known: dict[str, Known]) -> None:
        watch = config.watch
        self.config = config
        self.ledger = ledger
        self.known = known
        self.roots = [Path(os.path.abspath(path)) for path in watch.paths]
        self.filter = PathFilter(watch.include, watch.exclude)
        self.rule = OpenRule.for_watch(self.roots, watch.follow_symlinks)
        self.checks = FinishedChecks(
            check_open_writers=watch.check_open_writers,
            check_container=watch.check_container,
            done_marker=watch.done_marker,
            rule=self.rule,
        )
        self.namer = RecordNamer(config.record, settle=watch.settle, rule=self.rule)
        self.plan = Plan()
        self._uploads: dict[str, str] = {}  # fingerprint -> path, for copies within the plan

    async def run(self) -> Plan:
        for root in self.roots:
            await self._root(root)
        self.plan.entries.sort(key=lambda entry: entry.path)
        return self.plan

    async def _root(self, root: Path) -> None:
        problems: list[tuple[Path, OSError]] = []
        if not root.is_dir():
            self.plan.folders.append({"path": str(root), "problem": "missing (not a folder)"})
            return
        watch = self.config.watch
        wanted = [
            entry.path
            for entry in iter_file_entries(
                root,
                self.filter,
                recursive=watch.recursive,
                follow_symlinks=watch.follow_symlinks,
                on_error=lambda path, err: problems.append((path, err)),
            )
        ]
        for folder, err in problems:
            self.plan.folders.append(
                {"path": str(folder), "problem": f"unreadable ({problem(err)})"}
            )
        companions = self._companions(wanted)
        wanted_set = set(wanted)
        for path in sorted(_every_file(root) - wanted_set):
            self._unwanted(root, path, companions)
        await self._judge(root, sorted(wanted_set))

    def _companions(self, wanted: list[str]) -> dict[str, str]:
        """Sidecars and done markers of the wanted files: path -> what it is."""
        found: dict[str, str] = {}
        for path in wanted:
            video = Path(path)
            marker = self.checks.marker_path(video)
            if marker is not None:
                found[str(marker)] = f"done marker of {video.name}"
            if self.config.record.sidecar:
                for candidate in sidecar_candidates(video):
                    found.setdefault(str(candidate), f"sidecar of {video.name}")
        return found

    def _unwanted(self, root: Path, path: str, companions: dict[str, str]) -> None:
        rel = PurePath(os.path.relpath(path, root))
        why: str | None
        if path in companions:
            why = companions[path]
        elif not self.config.watch.recursive and len(rel.parts) > 1:
            why = "in a subfolder (watch.recursive is off)"
        else:
            why = self.filter.why_unwanted(rel)
            if why is None:  # wanted by name: the walker left it out as a link
                why = "a symbolic link (watch.follow_symlinks is off)"
        self._add(Entry(path, str(root), SKIP, why))

    def _add(self, entry: Entry) -> Entry:
        self.plan.entries.append(entry)
        return entry

    async def _judge(self, root: Path, paths: list[str]) -> None:
        settled: list[tuple[Path, Snap, int]] = []
        now = time.time()
        for path in paths:
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(path).decode("utf-8", "backslashreplace")
                self._add(Entry(shown, str(root), SKIP, "the file name is not valid UTF-8"))
                continue
            try:
                current = snapshot(Path(path), follow_symlinks=self.config.watch.follow_symlinks)
            except OSError as err:
                self._add(Entry(path, str(root), WAIT, f"cannot check the file ({problem(err)})"))
                continue
            if current is None:
                continue  # gone since the walk
            snap = as_snap(current)
            job_id = await self._from_ledger(root, path, snap)
            if job_id is None:
                continue
            age = now - current.mtime_ns / 1e9
            settle = self.config.watch.settle
            if 0 <= age < settle:
                why = (
                    f"still being written (changed {format_duration(age)} ago; "
                    f"watch.settle is {format_duration(settle)})"
                )
                self._add(Entry(path, str(root), WAIT, why, job_id or None))
                continue
            settled.append((Path(path), snap, job_id))
        await self._finished(root, settled, now)

    async def _from_ledger(self, root: Path, path: str, snap: Snap) -> int | None:
        """What the ledger already says about ``path``: None when that settles it (done,
        a duplicate, failed, in flight), else the job id to judge it under (0: none)."""
        known = self.known.get(path)
        if known is None or self.ledger is None:
            return 0
        job_id, known_snap, state = known
        if state in SETTLED:
            if known_snap != snap:
                return 0  # changed after done: a new job
            why = "already uploaded" if state == State.DONE else "skipped earlier as a copy"
            self._add(Entry(path, str(root), SKIP, why, job_id))
            return None
        job = await self.ledger.get_job(job_id)
        if state == State.FAILED and known_snap == snap:
            why = f"failed: {job.fail_reason}: {job.fail_detail} (`ingestd retry {job_id}`)"
            self._add(Entry(path, str(root), SKIP, why, job_id))
            return None
        if state in IN_FLIGHT or job.force:
            entry = self._add(Entry(path, str(root), UPLOAD, f"{state.value} as job {job_id}"))
            entry.job = job_id
            await self._draft(entry, Path(path), root, snap)
            return None
        return job_id

    async def _finished(
        self, root: Path, settled: list[tuple[Path, Snap, int]], now: float
    ) -> None:
        """The finished checks and the duplicate test of the files that have settled."""
        files = [(path, snap) for path, snap, _job in settled]
        verdicts = await asyncio.to_thread(self._judge_all, files, now)
        for (path, snap, job_id), verdict in zip(settled, verdicts, strict=True):
            entry = Entry(str(path), str(root), WAIT, None, job_id or None)
            if verdict.internal_error is not None:
                entry.why = f"cannot check the file ({type(verdict.internal_error).__name__})"
            elif verdict.check_error is not None:
                entry.why = f"cannot check the file ({problem(verdict.check_error)})"
            elif verdict.reason is not None:
                entry.why = verdict.reason
            elif verdict.read_error is not None or verdict.fingerprint is None:
                entry.why = f"cannot read the file ({problem(verdict.read_error or OSError())})"
            else:
                await self._copy_or_upload(entry, path, root, snap, verdict.fingerprint, job_id)
            self._add(entry)

    def _judge_all(self, files: list[tuple[Path, Snap]], wall: float) -> list[Any]:
        try:
            writers = self.checks.writers_of([path for path, snap in files if snap[0] > 0])
        except OSError:
            writers = None
        sidecar_settle = self.config.watch.settle if self.config.record.sidecar else None
        return [
            judge_settled(
                self.checks,
                path,
                snap,
                wall,
                writers,
                sidecar_settle=sidecar_settle,
                rule=self.rule,
            )
            for path, snap in files
        ]

    async def _copy_or_upload(
        self, entry: Entry, path: Path, root: Path, snap: Snap, print_: str, job_id: int
    ) -> None:
        first = self._uploads.get(print_)
        if first is not None:
            entry.why = f"same content as {first}, which is uploaded first"
            return
        twin = await self.ledger.twin_of(print_, job_id) if self.ledger is not None else None
        try:
            same = compares_with(twin) and (
                await asyncio.to_thread(full_sha256, path, snap, self.rule)
                == (twin.sha256 if twin is not None else None)
            )
        except (OSError, FileRefused) as err:
            entry.why = f"cannot read the file ({problem(err)})"
            return
        outcome, why = twin_outcome(twin, same)
        if outcome == "duplicate":
            entry.action, entry.why = SKIP, why
            return
        if outcome == "wait":
            entry.why = why
            return
        entry.action = UPLOAD
        self._uploads[print_] = str(path)
        await self._draft(entry, path, root, snap)

    async def _draft(self, entry: Entry, path: Path, root: Path, snap: Snap) -> None:
        """The record the namer makes of it; a sidecar problem makes it wait or fail."""
        try:
            entry.draft = await self.namer.draft_for(path, root, snap[0], snap[1])
        except RetryableError as exc:
            entry.action, entry.why = WAIT, str(exc)
        except PermanentError as exc:
            entry.action, entry.why = FAIL, f"{exc.reason}: {exc}"


def _every_file(root: Path) -> set[str]:
    """Every regular file and symbolic link under ``root`` (links not followed), so that
    what the walker leaves out can be listed with its reason."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            found.add(os.path.join(folder, name))
    return found


# --- share names ----------------------------------------------------------------------------


async def resolve_shares(plan: Plan, namer: RecordNamer, config: Config, password: str) -> None:
    """Turn the share names of the uploads into ids with read-only calls (log in, list users
    and groups). A name the server does not know fails that file, as an upload would; a
    server that cannot be asked leaves every name unresolved, saying why."""
    drafts = [entry for entry in plan.entries if entry.draft is not None]
    for entry in drafts:
        entry.share = {kind: _unresolved(entry, kind) for kind in KINDS}
    if not any(isinstance(item, str) for e in drafts for c in _choices(e) for item in c.items):
        return
    async with client_for(config.valt, password) as client:
        namer.directory = ShareDirectory(client)
        try:
            await client.login()
            for entry in drafts:
                await _resolve_entry(entry, namer)
        except AuthFailed as exc:
            plan.shares_problem = f"{redact_url(config.valt.url)} refused the login ({exc})"
        except ValtError as exc:
            plan.shares_problem = f"{redact_url(config.valt.url)} cannot be reached: {exc}"


async def _resolve_entry(entry: Entry, namer: RecordNamer) -> None:
    for choice in _choices(entry):
        try:
            await namer.share_ids(choice)
        except PermanentError as exc:
            entry.action, entry.why = FAIL, f"{exc.reason}: {exc}"
            return
    for choice in _choices(entry):
        entry.share[choice.kind] = [
            {"id": item}
            if isinstance(item, int)
            else {"name": item, "id": await namer.directory.lookup(choice.kind, item)}
            for item in choice.items
        ]


def _choices(entry: Entry) -> list[ShareChoice]:
    return [] if entry.draft is None else [entry.draft.share[kind] for kind in KINDS]


def _unresolved(entry: Entry, kind: str) -> list[dict[str, Any]]:
    """Ids as they are, names with no id yet (the server is asked later, if it can be)."""
    items = entry.draft.share[kind].items if entry.draft is not None else ()
    return [{"id": item} if isinstance(item, int) else {"name": item, "id": None} for item in items]


# --- output ---------------------------------------------------------------------------------


def as_json(plan: Plan, config: Config) -> dict[str, Any]:
    template_id = config.record.template_id
    return {
        "ledger": plan.ledger,
        "folders": plan.folders,
        "files": [entry.as_dict(template_id) for entry in plan.entries],
        "shares_resolved": plan.shares_problem is None,
        "shares_problem": plan.shares_problem,
        "totals": {action: sum(e.action == action for e in plan.entries) for action in ACTIONS},
    }


def render(data: dict[str, Any]) -> str:
    """The plan as lines for a person: one per file, the record under each upload."""
    lines = [f"ledger: {data['ledger'] or 'none yet (every file is new)'}"]
    for folder in data["folders"]:
        lines.append(f"FOLDER {folder['path']}: {folder['problem']}")
    for item in data["files"]:
        head = f"{item['action']:<7} {item['path']}"
        if "why" in item:
            head += f"  - {item['why']}"
        lines.append(head)
        record = item.get("record")
        if record is not None:
            lines.extend(_record_lines(record))
    if data["shares_problem"]:
        lines.append(f"share names could not be resolved: {data['shares_problem']}")
    totals = data["totals"]
    lines.append("totals: " + "  ".join(f"{action} {totals[action]}" for action in ACTIONS))
    return "\n".join(lines)


def _record_lines(record: dict[str, Any]) -> list[str]:
    lines = [f"        name:     {record['name']!r}"]
    if record["template"] or record["template_id"] is not None:
        fields = ", ".join(f"{key}={value!r}" for key, value in record["template"].items())
        which = f"template {record['template_id']}: " if record["template_id"] is not None else ""
        lines.append(f"        template: {which}{fields or '(no fields)'}")
    for kind, items in record["share"].items():
        if items:
            lines.append(f"        {kind + ':':<9} {', '.join(map(_principal, items))}")
    if record["sidecar"]:
        lines.append(f"        sidecar:  {Path(record['sidecar']).name}")
    return lines


def _principal(item: dict[str, Any]) -> str:
    if "name" not in item:
        return str(item["id"])
    return f"{item['name']} ({'unresolved' if item['id'] is None else item['id']})"


# --- the command ----------------------------------------------------------------------------


async def make_plan(config: Config, password: str | None) -> Plan:
    """The plan for ``config``: the ledger read-only if there is one, the server if needed."""
    ledger = None
    known: dict[str, Known] = {}
    if config.ledger.path.exists():
        ledger = await open_ledger(config, readonly=True)
    try:
        if ledger is not None:
            known = await ledger.known_snapshots()
        planner = Planner(config, ledger, known)
        plan = await planner.run()
        plan.ledger = None if ledger is None else str(config.ledger.path)
        if password is not None:
            await resolve_shares(plan, planner.namer, config, password)
        return plan
    finally:
        if ledger is not None:
            await ledger.close()


def command(args: argparse.Namespace) -> int:
    config = load(args)
    password = resolve_password(config.valt, os.environ)
    register_secret(password)
    configure_logging(fmt="json", level="error", stream=sys.stderr)
    with advice_names(config):
        plan = asyncio.run(make_plan(config, password))
    data = as_json(plan, config)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return EXIT_OK
