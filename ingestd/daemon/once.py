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
        states = await ledger.states_of(scope)  # one query a pass, whatever the scope's size
        if progress is not None:
            jobs = await _jobs(ledger, [i for i in scope if i in states])
            progress.draw(jobs)
        live = [i for i in scope if i in states and states[i] not in TERMINAL]
        why = _server_stops_it(client, deadline)
        if why is not None:
            result = RunResult(1, await _jobs(ledger, live), why)
            break
        only_waiting = all(states[i] == State.WAITING for i in live)
        if not live or (only_waiting and time.monotonic() >= deadline):
            unfinished = (State.DONE, State.SKIPPED)
            not_done = [i for i in scope if i in states and states[i] not in unfinished]
            result = RunResult(1 if not_done else 0, await _jobs(ledger, not_done))
            break
        await asyncio.sleep(ONCE_POLL)
    if progress is not None:
        progress.close(await _jobs(ledger, scope) if result is not None else jobs)
    return result


def _server_stops_it(client: ValtClient, deadline: float) -> str | None:
    """Why the server ends the pass now (refused credentials, a redirect, an outage longer
    than ``--max-wait``); None: it goes on."""
    if client.auth_failed:
        return "the server refused the credentials"
    if client.redirect is not None:
        return client.redirect
    if client.outage.down and time.monotonic() >= deadline:
        return client.outage.describe()  # --max-wait bounds how long --once waits for it
    return None


async def _jobs(ledger: JobLedger, job_ids: list[int]) -> list[Job]:
    """These jobs as they are now (those still in the ledger), in order."""
    found = [await ledger.find_job(job_id) for job_id in job_ids]
    return [job for job in found if job is not None]
