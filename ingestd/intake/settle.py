"""The settle loop: when is a waiting file finished?

A waiting file must keep the same size, mtime and identity for
``watch.settle`` seconds; then the finished checks (open writers, the MP4
container, a done marker, a settled sidecar) decide, and a finished file
goes on to the duplicate check and the queue (:mod:`ingestd.intake.ready`).
Until then its reason is in the ledger, for ``ingestd status``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from ingestd.aio import wait_any
from ingestd.config.schema import WatchConfig
from ingestd.disk.folders import FolderState, folder_problem, folder_state
from ingestd.disk.judged import FileSnapshot, OpenRule, snapshot
from ingestd.errors import FileRefused, LedgerUnwritable
from ingestd.intake.finished import FinishedChecks, WritersVerdict
from ingestd.intake.identity import fingerprint
from ingestd.intake.ready import Pending, Ready
from ingestd.intake.sidecar import sidecar_wait_reason
from ingestd.intake.waiting import Snap, Tracked, Verdict, Waiting, as_snap, problem
from ingestd.ledger.api import JobLedger
from ingestd.logs import get_logger

log = get_logger("ingestd.intake.settle")

# With no file waiting, the settle loop looks this often (scans and events wake it at once).
IDLE_SETTLE_POLL = 2.0
# Files a settle pass queues per transaction (workers start on the first ones meanwhile).
QUEUE_BATCH = 256
STILL_CHANGING_AFTER = 60.0
STILL_CHANGING_EVERY = 300.0


def _look_all(
    paths: list[str], roots: set[str], follow_symlinks: bool, require_mount: bool
) -> tuple[list[FileSnapshot | OSError | None], dict[str, FolderState]]:
    """:func:`snapshot` of each path (its OSError in its place), then the state of each
    of their watch folders, in one worker thread. The folders are looked at after the
    files: a file that vanished with its folder is then never taken for one deleted."""
    looks: list[FileSnapshot | OSError | None] = []
    for path in paths:
        try:
            looks.append(snapshot(Path(path), follow_symlinks=follow_symlinks))
        except OSError as err:
            looks.append(err)
    states = {root: folder_state(Path(root), require_mount=require_mount) for root in roots}
    return looks, states


def judge_settled(
    checks: FinishedChecks,
    path: Path,
    snap: Snap,
    wall: float,
    writers: dict[Path, WritersVerdict | OSError] | None,
    *,
    sidecar_settle: float | None,
    rule: OpenRule,
) -> Verdict:
    """Why the settled file ``path`` (as ``snap``) must still wait, else its fingerprint.

    Blocks on the disk (a worker thread). The settle loop and ``ingestd plan`` both
    judge with this, so the two never disagree. ``sidecar_settle``: ``watch.settle``
    when ``record.sidecar`` is on (a sidecar must settle too), else None. Whatever
    judging raises is this file's verdict, never the caller's.
    """
    verdict = Verdict()
    try:
        try:
            verdict.reason = "empty file (0 bytes)" if snap[0] == 0 else None
            if verdict.reason is None:
                verdict.reason = checks.why_not_finished(
                    path, snap[0], writers=writers, judged=snap
                )
            if verdict.reason is None and sidecar_settle is not None:
                # Wall time, as it is compared with the sidecar's mtime.
                verdict.reason = sidecar_wait_reason(path, sidecar_settle, wall, rule)
        except (OSError, FileRefused) as err:
            verdict.check_error = err
        if verdict.reason is None and verdict.check_error is None:
            try:
                verdict.fingerprint = fingerprint(path, snap, rule)
            except (OSError, FileRefused) as err:
                verdict.read_error = err
    except Exception as err:
        verdict.internal_error = err
    return verdict


class Settler:
    """Watches the waiting files until each is finished, then hands it to :class:`Ready`."""

    def __init__(
        self,
        *,
        watch: WatchConfig,
        sidecars: bool,
        ledger: JobLedger,
        checks: FinishedChecks,
        rule: OpenRule,
        is_active: Callable[[int], bool],
        waiting: Waiting,
        ready: Ready,
    ) -> None:
        self.watch = watch
        self.sidecars = sidecars
        self.ledger = ledger
        self.checks = checks
        self.rule = rule
        self.is_active = is_active
        self.waiting = waiting
        self.ready = ready
        self._roots = [os.path.abspath(path) for path in watch.paths]  # as jobs name them

    def tick_interval(self) -> float:
        return max(0.2, min(1.0, self.watch.settle / 5))

    async def settle(self) -> bool:
        """One pass over the waiting files: queue those that are finished; False if none wait.

        A pass costs a few thread hops, not a few per file: all its stats in one,
        the finished checks and fingerprints of the files that settled in another
        (with one look at ``/proc`` for each batch of them), and the files found
        finished are queued a batch a transaction. A drop of thousands of files at
        once then costs milliseconds a file.
        """
        waiting = await self.ledger.waiting()
        present = {job.id for job in waiting}
        for job_id in list(self.waiting.tracking):
            if job_id not in present:
                del self.waiting.tracking[job_id]
        jobs = [job for job in waiting if not self.is_active(job.id)]
        if not jobs:
            return bool(waiting)
        looks, folders = await asyncio.to_thread(
            _look_all,
            [job.path for job in jobs],
            {job.root for job in jobs} & set(self._roots),  # a root no longer watched: as before
            self.watch.follow_symlinks,
            self.watch.require_mount,
        )
        due: list[tuple[int, Path, Tracked]] = []
        for job, look in zip(jobs, looks, strict=True):
            path = Path(job.path)
            state = folders.get(job.root, FolderState.PRESENT)
            if state != FolderState.PRESENT:
                # A share that vanished is not a deleted file: the job waits for it.
                await self._folder_away(job.id, path, job.root, job.snapshot, state)
                continue
            try:
                if isinstance(look, OSError):
                    raise look
                tracked = await self._settle_one(job.id, path, job.force, look)
            except (OSError, FileRefused) as err:
                # One file's trouble (a folder it cannot search, a name too long for
                # its marker) must not stop the loop, nor hold up the other files.
                await self._cannot_check(job.id, path, job.snapshot, err)
                continue
            except LedgerUnwritable:
                raise  # not this file's trouble: the ledger watch reports it
            except Exception as err:  # a bug about one file: that file waits, the rest go on
                await self._judging_failed(job.id, path, job.snapshot, err)
                continue
            if tracked is not None:
                due.append((job.id, path, tracked))
        if due:
            await self._finish(due)
        return True

    async def _folder_away(
        self, job_id: int, path: Path, root: str, snap: Snap, state: FolderState
    ) -> None:
        now = time.monotonic()
        tracked = self.waiting.tracking.setdefault(job_id, Tracked(snap, now, now))
        label = self.watch.label(self._roots.index(root))
        await self.waiting.wait(job_id, path, tracked, folder_problem(label, state, None))

    async def _cannot_check(
        self, job_id: int, path: Path, snap: Snap, err: OSError | FileRefused
    ) -> None:
        now = time.monotonic()
        tracked = self.waiting.tracking.setdefault(job_id, Tracked(snap, now, now))
        await self.waiting.wait(job_id, path, tracked, f"cannot check the file ({problem(err)})")

    async def _judging_failed(self, job_id: int, path: Path, snap: Snap, err: Exception) -> None:
        """An unexpected error judging one file (design.md: one file's trouble is that
        file's outcome): it waits with the error's type as its reason, logged once."""
        now = time.monotonic()
        tracked = self.waiting.tracking.setdefault(job_id, Tracked(snap, now, now))
        reason = f"cannot check the file (internal error: {type(err).__name__}; see the log)"
        if reason != tracked.reason:
            log.error(
                "file.check_failed",
                job_id=job_id,
                path=str(path),
                error=type(err).__name__,
                exc_info=err,
            )
        await self.waiting.wait(job_id, path, tracked, reason)

    async def _settle_one(
        self, job_id: int, path: Path, force: bool, current: FileSnapshot | None
    ) -> Tracked | None:
        """Track one waiting file's latest look; returns its entry when it has settled
        and is due for the finished checks (:meth:`_finish`), else None."""
        now = time.monotonic()
        if current is None:
            await self.ledger.forget(job_id)
            self.waiting.tracking.pop(job_id, None)
            log.info("file.vanished", job_id=job_id, path=str(path))
            return None
        snap = as_snap(current)
        tracked = self.waiting.tracking.setdefault(job_id, Tracked(snap, now, now))
        if snap != tracked.snap:
            tracked.snap, tracked.since = snap, now
            self._log_still_changing(job_id, path, tracked, now)
            await self.waiting.wait(job_id, path, tracked, "still being written", log_it=False)
        if force:
            pending = Pending()
            await self.ready.identify(job_id, path, tracked, now, force=True, pending=pending)
            await self.ready.queue_all(pending)
            return None
        if now - tracked.since < self.watch.settle:
            return None
        return tracked

    async def _finish(self, due: list[tuple[int, Path, Tracked]]) -> None:
        """The finished checks (and fingerprints) of the files that settled, a thread hop
        and a transaction per QUEUE_BATCH files: of thousands that settled together, the
        first are uploading while the rest are still being checked."""
        for first in range(0, len(due), QUEUE_BATCH):
            await self._finish_batch(due[first : first + QUEUE_BATCH])

    async def _finish_batch(self, due: list[tuple[int, Path, Tracked]]) -> None:
        now = time.monotonic()
        files = [(path, tracked.snap) for _job_id, path, tracked in due]
        verdicts = await asyncio.to_thread(self._judge_all, files, time.time())
        # Earlier jobs of the same content, for the whole batch in one query.
        twins = await self.ledger.twins_of(
            {
                job_id: verdict.fingerprint
                for (job_id, _path, _tracked), verdict in zip(due, verdicts, strict=True)
                if verdict.fingerprint is not None and verdict.reason is None
            }
        )
        pending = Pending()
        for (job_id, path, tracked), verdict in zip(due, verdicts, strict=True):
            if verdict.internal_error is not None:
                await self._judging_failed(job_id, path, tracked.snap, verdict.internal_error)
            elif verdict.check_error is not None:
                await self._cannot_check(job_id, path, tracked.snap, verdict.check_error)
            elif verdict.reason is not None:
                await self.waiting.wait(job_id, path, tracked, verdict.reason)
            else:
                await self.ready.identify(
                    job_id,
                    path,
                    tracked,
                    now,
                    force=False,
                    pending=pending,
                    verdict=verdict,
                    twins=twins,
                )
        await self.ready.queue_all(pending)

    def _judge_all(self, files: list[tuple[Path, Snap]], wall: float) -> list[Verdict]:
        """In a worker thread: why each settled file must still wait, else its fingerprint.

        ``wall`` is ``time.time()``: a sidecar settles by its mtime. Whatever one
        file's judging raises is that file's verdict, never the batch's.
        """
        try:
            writers = self.checks.writers_of([path for path, snap in files if snap[0] > 0])
        except OSError:
            writers = None  # /proc unreadable: each file's check then looks for itself
        verdicts = []
        for path, snap in files:
            verdicts.append(
                judge_settled(
                    self.checks,
                    path,
                    snap,
                    wall,
                    writers,
                    sidecar_settle=self.watch.settle if self.sidecars else None,
                    rule=self.rule,
                )
            )
        return verdicts

    def _log_still_changing(self, job_id: int, path: Path, tracked: Tracked, now: float) -> None:
        if (
            now - tracked.first_seen >= STILL_CHANGING_AFTER
            and now - tracked.changing_logged >= STILL_CHANGING_EVERY
        ):
            tracked.changing_logged = now
            log.info(
                "file.still_changing",
                job_id=job_id,
                path=str(path),
                size=tracked.snap[0],
                changing_for_s=round(now - tracked.first_seen),
            )

    async def run_settle(self, stop: asyncio.Event) -> None:
        """Settle passes every tick while files wait; with none, look every IDLE_SETTLE_POLL
        (another process may set one waiting: ``ingestd retry --force``), or at once when
        a scan or an event finds one."""
        while not stop.is_set():
            self.waiting.settle_now.clear()
            busy = await self.settle()
            await wait_any(
                stop, self.waiting.settle_now, self.tick_interval() if busy else IDLE_SETTLE_POLL
            )
