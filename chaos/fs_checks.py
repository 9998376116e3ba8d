"""The file-system part's promises, checked per phase and across the three.

A symlink, FIFO or folder swapped in is left as it is and never done; nothing of
the private file reaches the server, a log, a ledger or the server's metadata; no
version the campaign wrote and did not overwrite is lost or moved away unuploaded;
every regular file's last version is uploaded; the daemon logs no internal error.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from chaos.fs_actions import PrivateTap, kind_of, walk
from chaos.fs_phase import Phase, job_state
from chaos.fs_plan import FsFile, FsShared, bump
from chaos.harness import logged_errors, sha256_file

LOG_ERRORS = ("job.internal_error", "daemon.task_failed")


def check_phase(phase: Phase) -> None:
    """One phase, once its daemon stopped: last versions uploaded, swaps left alone."""
    report = phase.report
    jobs = phase.jobs()
    for item in phase.stale():
        report.add("stale_files", 1)
        row = jobs.get(str(phase.path(item)))
        phase.problem(f"{item.relpath}: its last version never uploaded ({job_state(row)})")
    for item in phase.files.values():
        if item.replaced_with is not None:
            report.add("replacements_ok", check_replacement(phase, item, jobs))
    for path in walk(phase.moved):
        if not stat.S_ISREG(os.lstat(path).st_mode) and not path.is_dir():
            phase.problem(f"move_to holds a {kind_of(path)}: {path}")
    check_log(phase)


def check_replacement(phase: Phase, item: FsFile, jobs: dict[str, dict[str, Any]]) -> bool:
    """A symlink, FIFO or folder put in place of a video: left as it is, and never done
    unless every byte had been sent before the swap."""
    path = phase.path(item)
    found = kind_of(path)
    ok = True
    if found != item.replaced_with:
        phase.problem(f"{item.relpath}: replaced by a {item.replaced_with}, now {found}")
        ok = False
    elif found == "symlink" and os.readlink(path) != str(phase.shared.private):
        phase.problem(f"{item.relpath}: the symlink now points elsewhere")
        ok = False
    moved = [p for p in walk(phase.moved) if p.name == path.name and kind_of(p) != "file"]
    if moved:
        phase.problem(f"{item.relpath}: the {item.replaced_with} was moved to {moved[0]}")
        ok = False
    row = jobs.get(str(path))
    # Swapped after every byte was sent (confirming): the server holds the judged file,
    # read through descriptors that proved it, so "done" is that upload's right end (the
    # after-upload action then leaves the swapped-in thing alone). Before that, never.
    uploaded_at = None if row is None else row["uploaded_at"]
    sent_before = uploaded_at is not None and float(uploaded_at) <= item.replaced_at
    if row is not None and row["state"] == "done" and not sent_before:
        phase.problem(
            f"{item.relpath}: its job became done after it was replaced by a "
            f"{item.replaced_with} (record {row['record_id']})"
        )
        ok = False
    return ok


def check_log(phase: Phase) -> None:
    bad = logged_errors(phase.log.read_text(errors="replace"), LOG_ERRORS)
    phase.report.add("internal_errors", sum(bad.values()))
    if bad:
        phase.problem(f"the daemon logged {dict(bad)} (see {phase.log})")


def check_campaign(
    shared: FsShared, phases: list[Phase], tap: PrivateTap, marker: bytes, private_sha: str
) -> None:
    """Across the phases: nothing private anywhere, no foreign bytes, no version lost."""
    report = shared.report
    held = shared.server_hashes()
    report.private_bytes = tap.copies * (len(marker) + 1)
    if tap.copies:
        report.problems.append(
            f"the server received the private file's marker {tap.copies} time(s)"
        )
    snapshot = shared.server.snapshot()
    shown = str(snapshot["records"]).encode().count(marker)
    if shown:
        bump(report.private_shown, "server metadata", shown)
    for phase in phases:
        texts = [phase.log, *phase.base.glob("ledger.db*")]
        texts += [p for p in walk(phase.export) if p.name.endswith(".error.txt")]
        texts += [p for p in walk(phase.moved) if p.name.endswith(".error.txt")]
        for path in texts:
            found = path.read_bytes().count(marker) if kind_of(path) == "file" else 0
            if found:
                bump(report.private_shown, f"{phase.action}/{path.name}", found)
    for where, count in sorted(report.private_shown.items()):
        report.problems.append(f"the private file's bytes appear in {where} ({count} times)")
    if not shared.private.exists() or sha256_file(shared.private) != private_sha:
        report.problems.append("the private file was moved, deleted or changed")
    for record in snapshot["records"]:
        for video in record["videos"] or []:
            if video.get("sha256") in held and video["sha256"] not in shared.versions:
                report.foreign_records += 1
                report.problems.append(
                    f"record {record['id']} ({record['name']!r}) holds bytes the campaign "
                    "never wrote (a mix of versions, a FIFO's or another file's)"
                )
    check_versions(shared, phases, held)


def check_versions(shared: FsShared, phases: list[Phase], held: set[str]) -> None:
    """Every version not overwritten by the campaign: on the server or still in place."""
    report = shared.report
    in_watch: set[str] = set()
    in_moved: set[str] = set()
    for phase in phases:
        for into, top in ((in_watch, phase.export), (in_moved, phase.moved)):
            into.update(sha256_file(p) for p in walk(top) if kind_of(p) == "file")
    for digest, version in shared.versions.items():
        if version.retired or digest in held or digest in in_watch:
            continue
        if digest in in_moved:
            report.moved_unuploaded += 1
            what = "moved to move_to"
        else:
            report.lost += 1
            what = "deleted"
        report.problems.append(
            f"{version.phase} phase: {version.relpath}: a version never uploaded was {what} "
            f"(sha256 {digest[:12]})"
        )
