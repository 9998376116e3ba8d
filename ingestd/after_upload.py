"""What happens to a source file once its job has an outcome.

- ``done``: keep, move (to ``after_upload.move_to``) or delete, only after the
  server confirmed the video; then, with ``keep_for``, the kept source or its
  moved copy is deleted that long after ``done``, so the capture disk does
  not fill up.
- ``failed`` for good: moved to ``after_upload.failed_to`` with a
  ``NAME.error.txt`` beside it that says why and what to do.

The done marker and sidecars travel with their video. A move never
overwrites: a clash gets a `` (1)`` suffix, the stem shortened so the name
stays within 255 bytes. Empty folders left behind are removed, never a watch
root itself. Every outcome is committed to the ledger, so a crash between
``done`` and the action only delays the action (:func:`housekeeping`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ingestd.config import Config
from ingestd.ledger import Job, Ledger
from ingestd.logs import get_logger
from ingestd.metadata import relative_path
from ingestd.sidecar import sidecar_paths

log = get_logger("ingestd.after_upload")

NAME_MAX = 255

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


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem (N).ext`` if taken; never longer than 255 bytes."""
    stem, suffix = os.path.splitext(name)
    number = 0
    candidate = folder / _fit(stem, suffix)
    while os.path.lexists(candidate):
        number += 1
        candidate = folder / _fit(stem, f" ({number}){suffix}")
    return candidate


def _fit(stem: str, tail: str) -> str:
    budget = NAME_MAX - len(tail.encode())
    return stem.encode()[:budget].decode("utf-8", "ignore") + tail


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

    @classmethod
    def of(cls, config: Config) -> Belongings:
        return cls(config.watch.done_marker, config.record.sidecar)


def companions(video: Path, belongs: Belongings) -> list[Path]:
    """Files that belong to ``video`` and exist: its sidecars and its done marker."""
    found = sidecar_paths(video) if belongs.sidecars else []
    if belongs.done_marker:
        marker = video.with_name(video.name + belongs.done_marker)
        # os.path.lexists, unlike Path.exists, says False for a name too long to exist.
        if os.path.lexists(marker):
            found.append(marker)
    return found


def _move_to(source: Path, root: Path, target_root: Path, belongs: Belongings) -> Path:
    """Move ``source`` and its companions below ``target_root``, keeping the relative path."""
    rel = relative_path(source, root)
    folder = target_root / rel.parent
    folder.mkdir(parents=True, exist_ok=True)
    destination = free_name(folder, rel.name)
    extras = companions(source, belongs)
    shutil.move(str(source), str(destination))
    for extra in extras:
        shutil.move(str(extra), str(free_name(folder, _renamed_with(extra, source, destination))))
    remove_empty_parents(source, root)
    return destination


def _renamed_with(extra: Path, source: Path, destination: Path) -> str:
    """A companion's new name: ``clip.json`` follows ``clip.mp4`` to ``clip (1).json``."""
    if extra.name.startswith(source.name):
        return destination.name + extra.name[len(source.name) :]
    return destination.stem + extra.name[len(source.stem) :]


def _delete(source: Path, root: Path, belongs: Belongings) -> None:
    for extra in companions(source, belongs):
        extra.unlink(missing_ok=True)
    source.unlink(missing_ok=True)
    remove_empty_parents(source, root)


async def apply_after_upload(config: Config, ledger: Ledger, job: Job) -> None:
    """Keep, move or delete a done job's source; commit where it is now."""
    action, belongs = config.after_upload.action, Belongings.of(config)
    source, root = Path(job.path), Path(job.root)
    final: str | None = job.path
    try:
        if action == "move":
            assert config.after_upload.move_to is not None
            moved = await asyncio.to_thread(
                _move_to, source, root, config.after_upload.move_to, belongs
            )
            final = str(moved)
            log.info("file.moved", job_id=job.id, path=job.path, dest=final)
        elif action == "delete":
            await asyncio.to_thread(_delete, source, root, belongs)
            final = None
            log.info("file.deleted", job_id=job.id, path=job.path)
    except OSError as exc:
        log.error(
            "after_upload.failed",
            job_id=job.id,
            path=job.path,
            action=action,
            error=exc.strerror or str(exc),
        )
        return  # after_done stays 0: housekeeping tries again
    await ledger.update(job.id, after_done=1, final_path=final)


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


def _move_failed(job: Job, target_root: Path, belongs: Belongings, text: str) -> Path:
    source, root = Path(job.path), Path(job.root)
    destination = _move_to(source, root, target_root, belongs)
    destination.with_name(destination.name + ".error.txt").write_text(text)
    return destination


async def move_failed(config: Config, ledger: Ledger, job: Job, reason: str, detail: str) -> None:
    """``after_upload.failed_to``: set a permanently failed file aside with its reason."""
    target = config.after_upload.failed_to
    if target is None or not Path(job.path).exists():
        return
    text = error_text(job, reason, detail, time.time())
    try:
        moved = await asyncio.to_thread(_move_failed, job, target, Belongings.of(config), text)
    except OSError as exc:
        log.error("failed_to.failed", job_id=job.id, path=job.path, error=exc.strerror or str(exc))
        return
    await ledger.update(job.id, final_path=str(moved))
    log.info("file.set_aside", job_id=job.id, path=job.path, dest=str(moved), reason=reason)


async def housekeeping(config: Config, ledger: Ledger) -> None:
    """Finish after-upload actions a crash interrupted; delete what ``keep_for`` has expired."""
    for job in await ledger.pending_after_actions():
        await apply_after_upload(config, ledger, job)
    keep_for = config.after_upload.keep_for
    if keep_for is None:
        return
    for job in await ledger.expired_keeps(time.time() - keep_for):
        kept = Path(job.final_path or job.path)
        move_to = config.after_upload.move_to
        moved = move_to is not None and job.final_path not in (None, job.path)
        root = move_to if moved and move_to is not None else Path(job.root)
        try:
            await asyncio.to_thread(_delete, kept, root, Belongings.of(config))
        except OSError as exc:
            log.error("keep_for.failed", job_id=job.id, path=str(kept), error=exc.strerror)
            continue
        await ledger.update(job.id, cleaned_at=time.time())
        log.info("file.expired", job_id=job.id, path=str(kept), keep_for_s=keep_for)
