"""Hooks the engine calls as things happen; metrics, health and alerts listen here.

The upload path calls these synchronously and cheaply: no I/O happens in a
hook (an alert is queued, never sent inline).
"""

from __future__ import annotations

import time


class Telemetry:
    """What the daemon has done since it started, as the engine reports it."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.bytes_sent = 0
        self.uploads_completed = 0
        self.last_upload_at: float | None = None
        self.failures: dict[str, int] = {}
        self.retries: dict[str, int] = {}
        self.server_failures = 0
        self.last_server_ok: bool | None = None

    def chunk_sent(self, nbytes: int) -> None:
        """A chunk of ``nbytes`` was acknowledged by the server."""
        self.bytes_sent += nbytes

    def upload_completed(self, size: int, seconds: float) -> None:
        """Every byte of a file is on the server (before confirmation)."""
        self.uploads_completed += 1
        self.last_upload_at = time.time()

    def job_done(self, job_id: int, path: str, record_id: str | None) -> None:
        """The server confirmed the video; the job is ``done``."""

    def job_failed(self, job_id: int, path: str, reason: str, detail: str) -> None:
        """A job failed permanently (``ingestd retry`` brings it back)."""
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def retry(self, cause: str) -> None:
        """A request failed and will be tried again; ``cause`` is a short code."""
        self.retries[cause] = self.retries.get(cause, 0) + 1

    def server_contact(self, ok: bool) -> None:
        """A request reached the server (``ok``) or did not (connection, timeout, 5xx)."""
        self.last_server_ok = ok
        if not ok:
            self.server_failures += 1
