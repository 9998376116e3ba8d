"""Live progress of ``ingestd run`` on a terminal: one line, kept below the log lines.

The line is a :class:`ingestd.logs.LiveLine`: the log writer clears it before
each log line and draws it again after, so the two never run together. Off a
terminal nothing is drawn; the log's ``upload.progress`` events (at most every
few seconds per job) tell the same story to a log reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TextIO

from ingestd.aio import wait_event
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import TERMINAL, Job, State
from ingestd.logs import LiveLine
from ingestd.units import format_duration, format_size

FINISHED = (State.DONE, State.SKIPPED)
DRAW_EVERY = 1.0  # the daemon's line; run --once redraws at its own poll


class ProgressLine:
    """Files done of total, bytes sent of total, rate and ETA."""

    def __init__(self, stream: TextIO) -> None:
        self.line = LiveLine(stream)
        self.started = time.monotonic()
        self._first_bytes: int | None = None

    def render(self, jobs: Sequence[Job]) -> str:
        done = sum(job.state in FINISHED for job in jobs)
        total_bytes = sum(job.size for job in jobs)
        sent = sum(job.size if job.state in FINISHED else job.bytes_acked for job in jobs)
        if self._first_bytes is None:
            self._first_bytes = sent  # what earlier runs sent does not count for the rate
        elapsed = time.monotonic() - self.started
        rate = (sent - self._first_bytes) / elapsed if elapsed > 0 else 0.0
        line = f"[{done}/{len(jobs)} files] {format_size(sent)} of {format_size(total_bytes)}"
        if rate > 0:
            left = max(0, total_bytes - sent)
            line += f", {format_size(int(rate))}/s, {format_duration(round(left / rate))} left"
        waiting = sum(job.state == State.WAITING for job in jobs)
        if waiting:
            line += f", {waiting} waiting to be finished"
        return line

    def draw(self, jobs: Sequence[Job]) -> None:
        self.line.show(self.render(jobs))

    def close(self, jobs: Sequence[Job]) -> None:
        self.draw(jobs)
        self.line.end()


async def show_progress(ledger: JobLedger, stream: TextIO, stop: asyncio.Event) -> None:
    """The daemon's line: the files of the current batch of work, from the first file that
    is not finished to the moment all are; then it says idle and the next batch starts."""
    line = ProgressLine(stream)
    batch: dict[int, Job] = {}  # every job of this batch, finished ones too
    try:
        while not stop.is_set():
            live = await ledger.jobs_in([s for s in State if s not in TERMINAL])
            ids = {job.id for job in live}
            for job_id, job in list(batch.items()):
                if job_id not in ids and job.state not in TERMINAL:  # finished since
                    batch[job_id] = await ledger.find_job(job_id) or job
            batch.update((job.id, job) for job in live)
            if live:
                line.draw(list(batch.values()))
            elif batch:  # the batch is over: its last line stays, the next starts afresh
                line.close(list(batch.values()))
                line, batch = ProgressLine(stream), {}
            await wait_event(stop, DRAW_EVERY)
    finally:
        line.line.end()
