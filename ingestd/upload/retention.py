"""``ledger.forget_after``: forget done jobs whose source is gone, so the ledger does not grow
for ever (design.md: "nothing grows without bound").

A done job is what keeps its file from being uploaded again: the scan compares each file
with its path's newest job. So a job is forgotten only once its source is gone for sure:

- moved away by ``move_to`` (``final_path`` elsewhere), or deleted by the after-upload
  action or by ``keep_for`` (``cleaned_at``): the ledger recorded it;
- a newer job of the same path exists (the file there is that job's);
- kept where it was and since deleted by someone: nothing is at its path, and the nearest
  folder above it that exists is on the file's own device. An unmounted share, or a folder
  that vanished with it, fails that test: its files are not gone, only out of sight.

What it costs: a forgotten file that reappears (copied back, a restored share) is a new
file, and is uploaded again; ``ingestd export`` no longer lists it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ingestd.disk.judged import ANY_DEVICE
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job, OldDone
from ingestd.logs import get_logger

log = get_logger("ingestd.upload.retention")

# Jobs looked at per ledger query, and deleted per statement: a first pass over years of
# rows holds the ledger for a moment at a time.
BATCH = 500
# A pass lstat()s every old done file still kept in its folder: hourly is often enough.
FORGET_EVERY = 3600.0


def _gone_from_disk(job: Job) -> bool:
    """Nothing at the job's path, in a folder that is really there (not an unmounted share)."""
    path, root = Path(job.path), Path(job.root)
    try:
        os.lstat(path)
        return False  # still there (or something else is, and will become a job of its own)
    except FileNotFoundError:
        pass
    except OSError:
        return False  # cannot look (permissions): cannot tell
    folder = path.parent
    while True:
        try:
            device = os.stat(folder).st_dev
            if job.device == ANY_DEVICE:  # a shared ledger's job: this host's own numbers
                return folder != root or os.path.ismount(root)
            return device == job.device
        except (FileNotFoundError, NotADirectoryError):
            if folder == root or not folder.is_relative_to(root):
                return False  # the watch folder itself is missing
            folder = folder.parent
        except OSError:
            return False


def source_gone(old: OldDone) -> bool:
    """May ``old`` be forgotten without its file being uploaded again (module docstring)?"""
    job = old.job
    if old.superseded or job.cleaned_at is not None:
        return True
    if job.final_path is not None and job.final_path != job.path:
        return True
    return _gone_from_disk(job)


def _gone_ids(batch: list[OldDone]) -> list[int]:
    return [old.job.id for old in batch if source_gone(old)]


async def forget_old(ledger: JobLedger, forget_after: float, now: float | None = None) -> int:
    """Forget the done jobs older than ``forget_after`` whose source is gone; returns how
    many. Logged once per pass (``ledger.forgot``), when there were any."""
    before = (time.time() if now is None else now) - forget_after
    forgotten = looked_at = 0
    after_id = 0
    while True:
        batch = await ledger.old_done(before, after_id, BATCH)
        if not batch:
            break
        looked_at += len(batch)
        after_id = batch[-1].job.id
        gone = await asyncio.to_thread(_gone_ids, batch)
        if gone:
            forgotten += await ledger.forget_done(gone, before)
        if len(batch) < BATCH:
            break
    if forgotten:
        log.info(
            "ledger.forgot",
            jobs=forgotten,
            kept=looked_at - forgotten,
            forget_after_s=forget_after,
        )
    return forgotten
