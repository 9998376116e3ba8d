"""Webhook alerts (``alerts.webhook``): one JSON POST per condition, never one per retry.

Conditions:

- ``job.failed``: a job failed permanently (one message per failure);
- ``backlog.old`` / ``backlog.cleared``: the oldest file not yet sent passes
  ``alerts.backlog_age``, and later no file is that old any more;
- ``auth.failed`` / ``auth.recovered``: the server refuses the credentials,
  and later a login works again;
- ``server.unreachable`` / ``server.reachable``: the server does not answer
  (requests and a probe fail), and later it answers again.
- ``folder.problem`` / ``folder.recovered``: a watch folder is missing,
  unreadable or unmounted, and later present again (one each per folder).

The upload path only queues (:meth:`Alerter.job_failed` is called from a
telemetry hook); one task sends, with a short timeout and a few retries, so
a slow or dead receiver never holds an upload. The webhook URL often is the
secret itself (Slack, Teams): it is registered for scrubbing and never
logged; log lines name the alert's event only. With ``log.redact_paths`` no
path or file name appears in a payload either.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import time
from pathlib import PurePath
from typing import Any

import aiohttp

from ingestd.aio import wait_event
from ingestd.config.schema import AlertsConfig
from ingestd.disk.folders import FolderState, folder_problem
from ingestd.ledger.model import Job
from ingestd.logs import get_logger, path_token, redact_text, register_secret
from ingestd.observe.metrics import Metrics

log = get_logger("ingestd.observe.alerts")

SEND_TIMEOUT = 10.0
SEND_ATTEMPTS = 4
RETRY_FIRST = 1.0  # then 2 s, 4 s
FLUSH_TIMEOUT = 5.0  # at shutdown, how long queued alerts may still take
QUEUE_LIMIT = 200
_DETAIL_MAX = 500
# Every event an alert can carry (its alerts_sent/alerts_failed counters start at 0).
EVENTS = (
    "job.failed",
    "backlog.old",
    "backlog.cleared",
    "auth.failed",
    "auth.recovered",
    "server.unreachable",
    "server.reachable",
    "folder.problem",
    "folder.recovered",
)


class Alerter:
    """Turns conditions into messages, once each, and posts them to the webhook."""

    def __init__(self, config: AlertsConfig, *, redact_paths: bool, metrics: Metrics) -> None:
        self.webhook = config.webhook
        self.backlog_age = config.backlog_age
        self.redact_paths = redact_paths
        self.metrics = metrics
        metrics.count_alerts(EVENTS)
        self.host = socket.gethostname()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._backlog_old = False
        self._auth_failed = False
        self._server_down: float | None = None  # since when, as last alerted
        self._folders: dict[str, FolderState] = {}  # by label; absent: present
        register_secret(self.webhook)

    # --- conditions ---------------------------------------------------------------------

    def job_failed(self, job_id: int, path: str, reason: str, detail: str) -> None:
        """A job failed permanently. Called from a telemetry hook: it only queues."""
        what = f"job {job_id}" if self.redact_paths else PurePath(path).name
        self._raise(
            "job.failed",
            f"{what}: upload failed permanently ({reason}); `ingestd retry {job_id}` re-queues it",
            job_id=job_id,
            reason=reason,
            detail=self._scrub(detail, path)[:_DETAIL_MAX],
            **self._path_fields(path),
        )

    def backlog(self, files: int, oldest: Job | None) -> None:
        """Compare the oldest file not yet sent with ``alerts.backlog_age``; alert on a change."""
        age = 0.0 if oldest is None else time.time() - oldest.discovered_at
        old = oldest is not None and age > self.backlog_age
        if old == self._backlog_old:
            return
        self._backlog_old = old
        if oldest is None or not old:
            self._raise(
                "backlog.cleared",
                f"no file has waited longer than {self.backlog_age:.0f} s any more",
                files=files,
            )
            return
        self._raise(
            "backlog.old",
            f"{files} file(s) not yet uploaded; the oldest has waited {age:.0f} s "
            f"(alerts.backlog_age is {self.backlog_age:.0f} s)",
            files=files,
            oldest_age_s=round(age),
            backlog_age_s=self.backlog_age,
            job_id=oldest.id,
            state=oldest.state.value,
            **self._path_fields(oldest.path),
        )

    def auth(self, failed: bool) -> None:
        """Whether the server refuses the credentials now; alert when that changes."""
        if failed == self._auth_failed:
            return
        self._auth_failed = failed
        if failed:
            self._raise(
                "auth.failed",
                "the Valt server refuses the credentials: uploads are stopped until a login "
                "works (check valt.username and the password)",
            )
        else:
            self._raise("auth.recovered", "a login works again: uploads go on")

    def server(self, unreachable_since: float | None, sentence: str) -> None:
        """Whether the server is unreachable now (and since when); alert when that changes."""
        if unreachable_since == self._server_down:
            return
        was_down = self._server_down is not None
        self._server_down = unreachable_since
        if unreachable_since is not None:
            self._raise("server.unreachable", sentence, since=round(unreachable_since, 3))
        elif was_down:
            self._raise("server.reachable", "the Valt server answers again: uploads go on")

    def folder(self, label: str, state: FolderState, path: str) -> None:
        """A watch folder's state now; alert when it changes (a folder missing from the
        start alerts too)."""
        before = self._folders.get(label, FolderState.PRESENT)
        if state == before:
            return
        self._folders[label] = state
        if state == FolderState.PRESENT:
            self._raise(
                "folder.recovered",
                f"watch folder {label} is present again: its files are taken up",
                folder=label,
                **self._path_fields(path),
            )
            return
        self._raise(
            "folder.problem",
            folder_problem(label, state, None),
            folder=label,
            state=state.value,
            **self._path_fields(path),
        )

    # --- messages -----------------------------------------------------------------------

    def _path_fields(self, path: str) -> dict[str, str]:
        return {"path": path_token(path)} if self.redact_paths else {"path": path}

    def _scrub(self, text: str, path: str) -> str:
        """Secrets out; with redact_paths also the path, its file name and stem
        (record names derive from them, and server messages quote record names)."""
        text = redact_text(text)
        if self.redact_paths:
            pure = PurePath(path)
            for piece in sorted({path, pure.name, pure.stem} - {""}, key=len, reverse=True):
                text = text.replace(piece, path_token(path))
        return text

    def _raise(self, event: str, summary: str, **details: Any) -> None:
        if self.webhook is None:
            return
        message = {
            "event": event,
            "host": self.host,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "summary": summary,
            **details,
        }
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            log.warning("alert.dropped", alert=event, queued=self._queue.qsize())

    # --- sending ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send queued messages until ``stop``; then give the rest ``FLUSH_TIMEOUT``."""
        if self.webhook is None:
            return
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                message = await self._next(stop)
                if message is not None:
                    await self._deliver(session, message, stop)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    while not self._queue.empty():
                        await self._deliver(session, self._queue.get_nowait(), stop)

    async def _next(self, stop: asyncio.Event) -> dict[str, Any] | None:
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([getter, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        return getter.result() if getter.done() and not getter.cancelled() else None

    async def _deliver(
        self, session: aiohttp.ClientSession, message: dict[str, Any], stop: asyncio.Event
    ) -> None:
        """POST one message; retry with backoff (one try only once stopping)."""
        assert self.webhook is not None
        event = str(message["event"])
        delay = RETRY_FIRST
        for attempt in range(1, SEND_ATTEMPTS + 1):
            error = await self._post(session, message)
            if error is None:
                self.metrics.alerts_sent.labels(event=event).inc()
                log.info("alert.sent", alert=event, attempt=attempt)
                return
            if attempt == SEND_ATTEMPTS or stop.is_set():
                break
            await wait_event(stop, delay)
            delay *= 2
        self.metrics.alerts_failed.labels(event=event).inc()
        log.warning("alert.failed", alert=event, attempts=attempt, error=error)

    async def _post(self, session: aiohttp.ClientSession, message: dict[str, Any]) -> str | None:
        """None when the receiver took it (2xx), else a short reason without the URL."""
        assert self.webhook is not None
        try:
            async with session.post(self.webhook, json=message) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            return type(exc).__name__  # its text may quote the URL
