"""``ingestd run --once``: when the pass is over, and what it reports.

The pass ends when every job in scope is finished, or only files that are not
finished remain once ``--max-wait`` has passed; a refused login or a redirect ends
it at once, an unreachable server after ``--max-wait``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ingestd.daemon.progress import ProgressLine
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import TERMINAL, Job, State
from ingestd.valt.client import ValtClient

ONCE_POLL = 0.2


@dataclass
class RunResult:
    """What ``run --once`` reports: exit code and the jobs that did not finish."""

    exit_code: int = 0
    not_done: list[Job] = field(default_factory=list)
    message: str | None = None


async def watch_once(
    ledger: JobLedger,
    client: ValtClient,
    scope: list[int],
    max_wait: float,
    stopping: asyncio.Event,
    progress: ProgressLine | None,
) -> RunResult | None:
    """Watch the jobs of ``scope`` until the pass is over; None if stopped first."""
    deadline = time.monotonic() + max_wait
    jobs: list[Job] = []
    result: RunResult | None = None
    while not stopping.is_set():
        jobs = [job for job in [await ledger.find_job(i) for i in scope] if job]
        if progress is not None:
            progress.draw(jobs)
        live = [job for job in jobs if job.state not in TERMINAL]
        if client.auth_failed:
            result = RunResult(1, live, "the server refused the credentials")
            break
        if client.redirect is not None:
            result = RunResult(1, live, client.redirect)
            break
        if client.outage.down and time.monotonic() >= deadline:
            result = RunResult(1, live, client.outage.describe())
            break  # --max-wait bounds how long --once waits for the server
        only_waiting = all(job.state == State.WAITING for job in live)
        if not live or (only_waiting and time.monotonic() >= deadline):
            not_done = [job for job in jobs if job.state not in (State.DONE, State.SKIPPED)]
            result = RunResult(1 if not_done else 0, not_done)
            break
        await asyncio.sleep(ONCE_POLL)
    if progress is not None:
        progress.close(jobs)
    return result
