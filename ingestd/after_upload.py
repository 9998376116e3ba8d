"""What happens to a source file once its job is ``done``: keep, move or delete.

Runs only after the server confirmed the video (the confirmer calls it after
committing ``done``). A move never overwrites: a clash gets a `` (1)`` suffix.
Empty folders left behind are removed, never a watch root itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from ingestd.config import Config
from ingestd.ledger import Job
from ingestd.logs import get_logger
from ingestd.metadata import relative_path

log = get_logger("ingestd.after_upload")

NAME_MAX = 255


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem (N).ext`` if taken; never longer than 255 bytes."""
    candidate = folder / name
    stem, suffix = os.path.splitext(name)
    number = 0
    while candidate.exists() or candidate.is_symlink():
        number += 1
        tag = f" ({number}){suffix}"
        budget = NAME_MAX - len(tag.encode())
        short = stem.encode()[:budget].decode("utf-8", "ignore")
        candidate = folder / f"{short}{tag}"
    return candidate


def remove_empty_parents(path: Path, root: Path) -> None:
    """Remove empty folders from ``path``'s parent up to, not including, ``root``."""
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _move(source: Path, root: Path, move_to: Path) -> Path:
    rel = relative_path(source, root)
    folder = move_to / rel.parent
    folder.mkdir(parents=True, exist_ok=True)
    destination = free_name(folder, rel.name)
    shutil.move(str(source), str(destination))
    remove_empty_parents(source, root)
    return destination


def _delete(source: Path, root: Path) -> None:
    source.unlink(missing_ok=True)
    remove_empty_parents(source, root)


async def apply_after_upload(config: Config, job: Job) -> None:
    """Keep, move or delete a done job's source; a failure is logged, never fatal."""
    action = config.after_upload.action
    if action == "keep":
        return
    source, root = Path(job.path), Path(job.root)
    try:
        if action == "move":
            assert config.after_upload.move_to is not None
            destination = await asyncio.to_thread(_move, source, root, config.after_upload.move_to)
            log.info("file.moved", job_id=job.id, path=job.path, dest=str(destination))
        else:
            await asyncio.to_thread(_delete, source, root)
            log.info("file.deleted", job_id=job.id, path=job.path)
    except OSError as exc:
        log.error(
            "after_upload.failed",
            job_id=job.id,
            path=job.path,
            action=action,
            error=exc.strerror or str(exc),
        )
