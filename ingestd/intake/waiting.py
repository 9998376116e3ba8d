"""The files that wait, as the intake stages share them.

Scans and folder events start tracking a file, the settle loop watches it
until it is finished, and the duplicate check and the queueing stop tracking
it. Each waiting file's reason is written to the ledger, so ``ingestd status``
can say why it waits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from ingestd.disk.judged import FileSnapshot
from ingestd.errors import FileRefused
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import State
from ingestd.logs import get_logger

log = get_logger("ingestd.intake.waiting")

Snap = tuple[int, int, int, int]
# A path whose newest job is in one of these states needs nothing while its file is unchanged.
SETTLED = (State.DONE, State.SKIPPED)


def as_snap(s: FileSnapshot) -> Snap:
    return (s.size, s.mtime_ns, s.inode, s.device)


def same_file(a: Snap, b: Snap) -> bool:
    """The same unchanged file: size, mtime and inode agree. The device is not compared
    (as disk/moves.Identity): a remount can give the same file system a new number."""
    return a[:3] == b[:3]


@dataclass
class Tracked:
    """A waiting file: the version last seen and since when it has not changed."""

    snap: Snap
    since: float
    first_seen: float
    reason: str | None = None
    changing_logged: float = 0.0


@dataclass
class Verdict:
    """What the finished checks said of one settled file (see Settler._judge_all)."""

    reason: str | None = None
    check_error: OSError | FileRefused | None = None
    fingerprint: str | None = None
    read_error: OSError | FileRefused | None = None
    internal_error: Exception | None = None


def problem(err: BaseException) -> str:
    """An OSError's words, or a refusal's (judged.py): never a sidecar's content."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


class Waiting:
    """The waiting files in memory (by job id), and the wake-up of the settle loop."""

    def __init__(self, ledger: JobLedger) -> None:
        self.ledger = ledger
        self.tracking: dict[int, Tracked] = {}
        self.settle_now = asyncio.Event()  # a file started waiting: settle without delay

    async def wait(
        self, job_id: int, path: Path, tracked: Tracked, reason: str, *, log_it: bool = True
    ) -> None:
        """Record why the file waits (``ingestd status`` shows it), once per reason."""
        if reason == tracked.reason:
            return
        tracked.reason = reason
        await self.ledger.update(job_id, wait_reason=reason)
        if log_it:
            log.info("file.waiting", job_id=job_id, path=str(path), reason=reason)
