"""Live progress of ``ingestd run --once`` on a terminal: one line, rewritten in place.

Off a terminal nothing is drawn; the log's ``upload.progress`` events (at
most every few seconds per job) tell the same story to a log reader.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from ingestd.ledger.model import Job, State
from ingestd.units import format_duration, format_size

FINISHED = (State.DONE, State.SKIPPED)
CLEAR_LINE = "\r\x1b[K"


class ProgressLine:
    """Files done of total, bytes sent of total, rate and ETA."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
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
        self.stream.write(CLEAR_LINE + self.render(jobs))
        self.stream.flush()

    def close(self, jobs: Sequence[Job]) -> None:
        self.draw(jobs)
        self.stream.write("\n")
        self.stream.flush()
