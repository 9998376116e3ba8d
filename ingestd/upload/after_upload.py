"""What happens to a source file once its job has an outcome.

- ``done``: keep, move (to ``after_upload.move_to``) or delete, only after the
  server confirmed the video; then, with ``keep_for``, the kept source or its
  moved copy is deleted that long after ``done``, so the capture disk does
  not fill up.
- ``failed`` for good: moved to ``after_upload.failed_to`` with a
  ``NAME.error.txt`` (0600) beside it that says why and what to do.

Each of these acts only on the very file that was uploaded (design.md,
"Trust rules"): the file whose identity the ledger recorded (the source's
snapshot, or the moved copy's identity recorded at the move), and never
while another live job owns the path. Otherwise the file is left alone,
``file.left_alone`` is logged, and the job's ``left_alone`` says why, so it
is not tried again: a recording written under an uploaded one's name is
never deleted or moved in its place (issue 11, finding 2). Only ``owned``
passes: once no live job owns the path, housekeeping tries the step again.

The done marker and sidecars travel with their video. A move never
overwrites and never leaves a partial file (disk/moves.py). Empty folders
left behind are removed, never a watch root itself. Every outcome is
committed to the ledger, so a crash between ``done`` and the action only
delays the action (:func:`housekeeping`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ingestd.config.schema import AfterUploadConfig
from ingestd.disk.judged import FileSnapshot, OpenRule
from ingestd.disk.moves import (
    Identity,
    NotThatFile,
    check_identity,
    find_moved_copy,
    make_folders_like,
    move_into,
    remove_folders,
)
from ingestd.disk.private import fsync_folder, write_private
from ingestd.failpoints import failpoint
from ingestd.intake.identity import full_sha256
from ingestd.intake.sidecar import sidecar_paths
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job, State
from ingestd.logs import get_logger
from ingestd.upload.naming import relative_path

log = get_logger("ingestd.upload.after_upload")

# What a person can do about each failure reason, for NAME.error.txt.
ADVICE = {
    "too_large": "The server refuses requests this large. Lower upload.chunk_size in the "
    "ingestd configuration, or raise the server's upload limit (nginx client_max_body_size).",
    "upload_refused": "The server refused the file itself. Check that it plays, and look at "
    "the server's logs for the reason given above.",
    "ambiguous_record": "Several empty records with this name were made on the server since "
    "the upload began. Delete the extra ones on the server before trying again.",
    "bad_sidecar": "The metadata file beside the video could not be read. Fix it (it must be "
    "valid JSON or YAML with name, template and share only).",
    "unauthorized": "The Valt account may not create records or upload. Ask the Valt "
    "administrator to grant it the permission.",
}
DEFAULT_ADVICE = (
    "Check that the Valt server is reachable and healthy, and that the file is a complete "
    "recording."
)


def remove_empty_parents(path: Path, root: Path) -> None:
    """Remove empty folders from ``path``'s parent up to, not including, ``root``."""
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


@dataclass(frozen=True, slots=True)
class Belongings:
    """Which files travel with a video: its done marker, and its sidecars if they are read."""

    done_marker: str | None
    sidecars: bool


def companions(video: Path, belongs: Belongings) -> list[Path]:
    """Files that belong to ``video`` and exist: its sidecars and its done marker."""
    found = sidecar_paths(video) if belongs.sidecars else []
    if belongs.done_marker:
        marker = video.with_name(video.name + belongs.done_marker)
        # os.path.lexists, unlike Path.exists, says False for a name too long to exist.
        if os.path.lexists(marker):
            found.append(marker)
    return found


Step = Literal["move", "delete", "keep_for", "failed_to"]


def source_identity(job: Job) -> Identity:
    """The source as it was judged and uploaded (the job's snapshot)."""
    return Identity(job.size, job.mtime_ns, job.inode, job.device)


def kept_identity(job: Job) -> Identity:
    """The file ``keep_for`` may delete: the moved copy as recorded at the move, else the
    source (kept where it was). A copy moved by a version-2 ingestd has no record: a rename
    kept the source's identity; a copy across file systems did not, and is left alone."""
    moved = job.final_path not in (None, job.path)
    size, mtime_ns, inode = job.final_size, job.final_mtime_ns, job.final_inode
    if not moved or size is None or mtime_ns is None or inode is None:
        return source_identity(job)
    return Identity(size, mtime_ns, inode, job.final_device or 0)


@dataclass(frozen=True, slots=True)
class Moved:
    """Where a move put the video, the identity it has there, and companions that stayed."""

    destination: Path
    identity: Identity
    stuck: list[tuple[Path, str]]

    def ledger_fields(self) -> dict[str, Any]:
        return {
            "final_path": str(self.destination),
            "final_size": self.identity.size,
            "final_mtime_ns": self.identity.mtime_ns,
            "final_inode": self.identity.inode,
            "final_device": self.identity.device,
        }


def _move_to(
    source: Path,
    root: Path,
    target_root: Path,
    belongs: Belongings,
    expected: Identity,
    sha256: str | None = None,
) -> Moved:
    """Move ``source`` (only while it is ``expected``) and its companions below ``target_root``,
    keeping the relative path. A source already moved there by an attempt that crashed
    before its commit (its copy found by identity, or by ``sha256``) counts as moved."""
    rel = relative_path(source, root)
    folder = target_root / rel.parent
    try:
        check_identity(source, expected)  # before anything is made for it
    except NotThatFile as exc:
        done = (
            _already_moved(folder, rel.name, expected, sha256) if exc.reason == "missing" else None
        )
        if done is None:
            raise
        return Moved(done, Identity.of(os.lstat(done)), [])
    made = make_folders_like(folder, target_root, root)
    extras = companions(source, belongs)
    try:
        destination = move_into(source, folder, rel.name, expected)
    except BaseException:
        remove_folders(made)  # a failed move leaves nothing behind
        raise
    identity = Identity.of(os.lstat(destination))
    stuck = []
    for extra in extras:  # the video's move stands (and is committed) whatever happens here
        try:
            move_into(extra, folder, _renamed_with(extra, source, destination))
        except OSError as exc:
            stuck.append((extra, exc.strerror or str(exc)))
    remove_empty_parents(source, root)
    return Moved(destination, identity, stuck)


def _already_moved(folder: Path, name: str, expected: Identity, sha256: str | None) -> Path | None:
    """The copy an interrupted move left in ``folder`` (disk/moves.py: find_moved_copy)."""

    def same_content(path: Path) -> bool:
        if not sha256:
            return False
        try:
            return full_sha256(path, FileSnapshot.of(os.lstat(path)), OpenRule()) == sha256
        except OSError:
            return False

    try:
        return find_moved_copy(folder, name, expected, same_content)
    except OSError:
        return None


def _renamed_with(extra: Path, source: Path, destination: Path) -> str:
    """A companion's new name: ``clip.json`` follows ``clip.mp4`` to ``clip (1).json``."""
    if extra.name.startswith(source.name):
        return destination.name + extra.name[len(source.name) :]
    return destination.stem + extra.name[len(source.stem) :]


def _delete(source: Path, root: Path, belongs: Belongings, expected: Identity) -> None:
    """Delete ``source`` and its companions, only while ``source`` is ``expected``."""
    check_identity(source, expected)
    for extra in companions(source, belongs):
        extra.unlink(missing_ok=True)
    source.unlink(missing_ok=True)
    fsync_folder(source.parent)  # durable before the ledger says "deleted"
    remove_empty_parents(source, root)


async def _leave_alone(
    ledger: JobLedger,
    job: Job,
    step: Step,
    path: str,
    reason: str,
    owner: int | None = None,
    **changes: Any,
) -> None:
    """Not the uploaded file (or another job's): log it, and mark the job so it stays alone."""
    fields: dict[str, Any] = {"job_id": job.id, "path": path, "action": step, "reason": reason}
    if owner is not None:
        fields["owner_job"] = owner
    await ledger.update(job.id, left_alone=reason, **changes)
    # A file already gone is no one's loss; another file under its name is worth a look.
    (log.info if reason == "missing" else log.warning)("file.left_alone", **fields)


async def _owner(ledger: JobLedger, job: Job, path: str, step: Step, **changes: Any) -> bool:
    """True (and the job marked) when another live job owns ``path``."""
    owner = await ledger.live_owner([path], job.id)
    if owner is None:
        return False
    await _leave_alone(ledger, job, step, path, "owned", owner, **changes)
    return True


def _stuck(job: Job, moved: Moved, step: Step) -> None:
    """Log the companions (sidecars, done marker) that could not follow their video."""
    event = "failed_to.failed" if step == "failed_to" else "after_upload.failed"
    for extra, error in moved.stuck:
        log.error(event, job_id=job.id, path=str(extra), action=step, error=error)


async def apply_once(
    config: AfterUploadConfig,
    belongs: Belongings,
    ledger: JobLedger,
    job: Job,
    lock: asyncio.Lock,
) -> None:
    """:func:`apply_after_upload` for a job that still needs it, under ``lock``.

    The confirmer (a job just done) and housekeeping (one a crash interrupted) can reach
    the same job at once; the second, finding the file already moved, would record it
    as missing over the first's ``final_path``. One lock per daemon, and the job read
    anew inside it, so the step runs once.
    """
    async with lock:
        fresh = await ledger.find_job(job.id)
        if fresh is None or fresh.state is not State.DONE or fresh.after_done:
            return
        await apply_after_upload(config, belongs, ledger, fresh)


async def apply_after_upload(
    config: AfterUploadConfig, belongs: Belongings, ledger: JobLedger, job: Job
) -> None:
    """Keep, move or delete a done job's source; commit where it is now."""
    action = config.action
    source, root = Path(job.path), Path(job.root)
    if action == "keep":  # done under another action, interrupted, and since set to keep
        await ledger.update(job.id, after_done=1, final_path=job.path)
        return
    gone: dict[str, Any] = {"after_done": 1, "final_path": None}
    if await _owner(ledger, job, job.path, action, **gone):
        return
    try:
        if action == "move":
            assert config.move_to is not None
            moved = await asyncio.to_thread(
                _move_to,
                source,
                root,
                config.move_to,
                belongs,
                source_identity(job),
                job.sha256,
            )
            failpoint("after_move")
            changes = moved.ledger_fields()
            log.info("file.moved", job_id=job.id, path=job.path, dest=changes["final_path"])
            _stuck(job, moved, "move")
        else:
            await asyncio.to_thread(_delete, source, root, belongs, source_identity(job))
            changes = {"final_path": None, "cleaned_at": time.time()}  # nothing left to expire
            log.info("file.deleted", job_id=job.id, path=job.path)
    except NotThatFile as exc:
        await _leave_alone(ledger, job, action, job.path, exc.reason, **gone)
        return
    except OSError as exc:
        log.error(
            "after_upload.failed",
            job_id=job.id,
            path=job.path,
            action=action,
            error=exc.strerror or str(exc),
        )
        return  # after_done stays 0: housekeeping tries again
    await ledger.update(job.id, after_done=1, **changes)


def error_text(job: Job, reason: str, detail: str, now: float) -> str:
    """The NAME.error.txt a person finds beside a file that could not be uploaded."""
    when = dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"ingestd could not upload this recording to Valt.\n\n"
        f"File:    {job.path}\n"
        f"Failed:  {when} (job {job.id})\n"
        f"Reason:  {reason}: {detail}\n\n"
        f"What to do: {ADVICE.get(reason, DEFAULT_ADVICE)}\n\n"
        f"To try again, move the file back to {job.path} and run: ingestd retry {job.id}\n"
    )


async def set_aside_once(
    config: AfterUploadConfig,
    belongs: Belongings,
    ledger: JobLedger,
    job: Job,
    reason: str,
    detail: str,
    lock: asyncio.Lock,
) -> None:
    """:func:`move_failed` for a failed job not yet set aside, under the daemon's ``lock``:
    the worker that failed it and housekeeping (after a crash came between) may both try."""
    async with lock:
        fresh = await ledger.find_job(job.id)
        if fresh is None or fresh.state is not State.FAILED:
            return
        if fresh.final_path is not None or fresh.left_alone is not None:
            return
        await move_failed(config, belongs, ledger, fresh, reason, detail)


async def move_failed(
    config: AfterUploadConfig,
    belongs: Belongings,
    ledger: JobLedger,
    job: Job,
    reason: str,
    detail: str,
) -> None:
    """``after_upload.failed_to``: set a permanently failed file aside with its reason."""
    target = config.failed_to
    if target is None or await _owner(ledger, job, job.path, "failed_to"):
        return
    source, root = Path(job.path), Path(job.root)
    try:
        moved = await asyncio.to_thread(
            _move_to, source, root, target, belongs, source_identity(job)
        )
    except NotThatFile as exc:
        await _leave_alone(ledger, job, "failed_to", job.path, exc.reason)
        return
    except OSError as exc:
        log.error("failed_to.failed", job_id=job.id, path=job.path, error=exc.strerror or str(exc))
        return
    await ledger.update(job.id, **moved.ledger_fields())
    _stuck(job, moved, "failed_to")
    note = moved.destination.with_name(moved.destination.name + ".error.txt")
    try:
        await asyncio.to_thread(write_private, note, error_text(job, reason, detail, time.time()))
    except OSError as exc:
        log.error("failed_to.failed", job_id=job.id, path=str(note), error=exc.strerror or str(exc))
    dest = str(moved.destination)
    log.info("file.set_aside", job_id=job.id, path=job.path, dest=dest, reason=reason)


async def housekeeping(
    config: AfterUploadConfig,
    belongs: Belongings,
    ledger: JobLedger,
    lock: asyncio.Lock | None = None,
) -> None:
    """Finish after-upload actions a crash interrupted, or another job's ownership of the
    file held back; delete what ``keep_for`` has expired. ``lock``: the daemon's, shared
    with the confirmer's after-upload step (:func:`apply_once`)."""
    lock = lock or asyncio.Lock()
    for job_id in await ledger.retake_unowned():
        log.info("file.no_longer_owned", job_id=job_id)
    claimed: list[int] = []  # a shared ledger hands these to this node alone, until released
    try:
        await _housekeeping(config, belongs, ledger, lock, claimed)
    finally:
        await ledger.release(claimed)


async def _housekeeping(
    config: AfterUploadConfig,
    belongs: Belongings,
    ledger: JobLedger,
    lock: asyncio.Lock,
    claimed: list[int],
) -> None:
    pending = await ledger.pending_after_actions()
    claimed.extend(job.id for job in pending)
    for job in pending:
        await apply_once(config, belongs, ledger, job, lock)
    if config.failed_to is not None:
        failed = await ledger.failed_not_set_aside()
        claimed.extend(job.id for job in failed)
        for job in failed:
            why = job.fail_reason or "failed"
            await set_aside_once(config, belongs, ledger, job, why, job.fail_detail or "", lock)
    keep_for = config.keep_for
    if keep_for is None:
        return
    expired = await ledger.expired_keeps(time.time() - keep_for)
    claimed.extend(job.id for job in expired)
    for job in expired:
        kept = Path(job.final_path or job.path)
        if await _owner(ledger, job, str(kept), "keep_for"):
            continue
        move_to = config.move_to
        moved = move_to is not None and job.final_path not in (None, job.path)
        root = move_to if moved and move_to is not None else Path(job.root)
        try:
            await asyncio.to_thread(_delete, kept, root, belongs, kept_identity(job))
        except NotThatFile as exc:
            await _leave_alone(ledger, job, "keep_for", str(kept), exc.reason)
            continue
        except OSError as exc:
            log.error("keep_for.failed", job_id=job.id, path=str(kept), error=exc.strerror)
            continue
        await ledger.update(job.id, cleaned_at=time.time())
        log.info("file.expired", job_id=job.id, path=str(kept), keep_for_s=keep_for)
