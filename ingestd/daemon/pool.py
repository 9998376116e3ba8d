"""The upload worker pool: a dispatcher feeds job ids (oldest file first) to N workers.

"In progress" lives in one place, :class:`InProgress`: a job taken from the
ledger is in it from the moment the dispatcher queues it until its worker
lets go of it. The intake asks it which jobs not to touch, the dispatcher
which jobs not to take again, health and ``systemctl status`` how many are
being uploaded. The ledger records each job's state; it does not know which
of them this process holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ingestd.aio import wait_event
from ingestd.errors import LedgerUnwritable
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import State
from ingestd.logs import get_logger
from ingestd.upload.job import Uploader

log = get_logger("ingestd.daemon.pool")

DISPATCH_POLL = 1.0


class InProgress:
    """The jobs this process holds: each one queued for a worker (None) or in worker N's hands."""

    def __init__(self) -> None:
        self._jobs: dict[int, int | None] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def ids(self) -> list[int]:
        return sorted(self._jobs)

    def in_workers(self) -> set[int]:
        """The jobs in a worker's hands now (not those queued for the next free worker)."""
        return {job_id for job_id, worker in self._jobs.items() if worker is not None}

    def worker_busy(self, worker: int) -> bool:
        return worker in self._jobs.values()

    def queue(self, job_id: int) -> None:
        self._jobs[job_id] = None

    def start(self, job_id: int, worker: int) -> None:
        self._jobs[job_id] = worker

    def release(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)


class WorkerPool:
    """The dispatcher and the workers; every job they hold is in ``in_progress``."""

    def __init__(
        self,
        *,
        workers: int,
        ledger: JobLedger,
        uploader: Uploader,
        stopping: asyncio.Event,
        paused: Callable[[], bool],
        blocked: Callable[[], bool],
        on_beat: Callable[[], None],
        on_job_end: Callable[[bool], None],
        wake: asyncio.Event,
    ) -> None:
        self.workers = workers
        self.ledger = ledger
        self.uploader = uploader
        self.stopping = stopping
        self._paused = paused
        self._blocked = blocked  # paused, the ledger takes no writes, login waits
        self._on_beat = on_beat
        self._on_job_end = on_job_end  # True: the job queued a partial record's deletion
        self.in_progress = InProgress()
        self.wake = wake  # set by whoever makes a job due or frees a worker
        self._queue: asyncio.Queue[int] = asyncio.Queue()

    async def dispatch(self) -> None:
        """Hand due jobs to free workers, oldest file first."""
        while not self.stopping.is_set():
            self._on_beat()
            # Each worker has its next job waiting in the queue while it works on one, so
            # it goes on at once instead of after a ledger round trip (small files: bench 4).
            free = 2 * self.workers - len(self.in_progress)
            wait = DISPATCH_POLL
            if free > 0 and not self._blocked():
                try:
                    wait = await self._dispatch_due(free)
                except LedgerUnwritable as exc:
                    # A shared ledger that does not answer: _blocked() holds new work back
                    # until the ledger watch hears it again.
                    log.warning("dispatch.ledger_unwritable", error=str(exc))
            self.wake.clear()
            await wait_event(self.wake, wait)

    async def _dispatch_due(self, free: int) -> float:
        """Queue up to ``free`` due jobs; returns how long the loop may wait for the next."""
        held = self.in_progress.ids()
        due = await self.ledger.due_jobs(time.time(), free, held)
        for job in due:
            self.in_progress.queue(job.id)
            self._queue.put_nowait(job.id)
        # A retry due sooner than the next poll is not kept waiting for it. (With every
        # slot filled, the next free worker wakes this loop anyway.)
        next_due = None if len(due) == free else await self.ledger.next_due(self.in_progress.ids())
        if next_due is None:
            return DISPATCH_POLL
        return min(DISPATCH_POLL, max(0.0, next_due - time.time()))

    async def worker(self, number: int) -> None:
        while not self.stopping.is_set():
            job_id = await self._queue.get()
            if self.stopping.is_set():
                self.in_progress.release(job_id)
                await self.ledger.release([job_id])
                return
            if self._paused():  # paused while the job waited in the queue: it stays queued
                self.in_progress.release(job_id)
                await self.ledger.release([job_id])
                continue
            self.in_progress.start(job_id, number)
            queued_deletions = self.ledger.deletions_queued
            try:
                job = await self.ledger.find_job(job_id)
                if job is not None and job.state in (State.QUEUED, State.CREATING, State.UPLOADING):
                    await self.uploader.process(job)
            except LedgerUnwritable as exc:
                # The job keeps its last committed state; the ledger watch stops new work.
                log.warning("job.ledger_unwritable", job_id=job_id, error=str(exc))
            except Exception:
                # process() records every outcome itself; whatever still escapes must not
                # take the worker, and with it the pool, down.
                log.exception("worker.failed", worker=number, job_id=job_id)
            finally:
                self.in_progress.release(job_id)
                # A shared ledger: another node may go on, once a request this worker gave up
                # on can no longer reach the server (postgres/claims.py, hold_back).
                await self.ledger.release([job_id], sent=True)
                self._on_job_end(self.ledger.deletions_queued != queued_deletions)
                self.wake.set()

    async def drain(self, workers: list[asyncio.Task[None]], timeout: float) -> None:
        """Let chunks in flight finish (bounded by ``timeout``), then cancel the rest."""
        started = time.monotonic()
        busy = []
        for number, task in enumerate(workers):
            if self.in_progress.worker_busy(number):
                busy.append(task)
            else:
                task.cancel()  # idle: waiting for a job that will not come
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=timeout)
            for task in pending:
                task.cancel()
            log.info(
                "daemon.drained",
                finished=len(busy) - len(pending),
                cancelled=len(pending),
                seconds=round(time.monotonic() - started, 3),
            )
