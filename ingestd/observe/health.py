"""``/healthz``, ``/metrics`` and the status page on ``status.listen``, and the periodic
health and alert look.

``/healthz`` answers 200 with a small JSON body when all is well, 503 with
the list of problems otherwise: the folder watcher is dead, the ledger is not
writable, the server refuses the credentials or redirects, the server is unreachable
(since when, and why), the last attempt to reach the server failed, a watch folder is
missing, unreadable or unmounted, or a watched volume
has less than ``watch.min_free`` free.
Being idle is healthy: nothing here ever sends a request to Valt, so health
reflects the last real contact only.

The daemon owns one :class:`StatusService`: it makes the telemetry object the
engine reports to, serves HTTP while the daemon runs (``serving``) and runs
one supervised task (``run``) that probes free space and raises alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ingestd.aio import wait_event
from ingestd.config.schema import AlertsConfig, StatusConfig, WatchConfig
from ingestd.disk.folders import FolderState, folder_states
from ingestd.errors import LedgerUnwritable
from ingestd.ledger.api import LEDGER_ERRORS, JobLedger
from ingestd.ledger.model import State, Unsent
from ingestd.logs import get_logger, redact_text
from ingestd.observe.alerts import Alerter
from ingestd.observe.folders import FolderHealth
from ingestd.observe.heartbeat import HEARTBEAT_EVERY, make_beat
from ingestd.observe.http import StatusServer, start_status_server
from ingestd.observe.metrics import CONTENT_TYPE, Metrics, MetricsTelemetry
from ingestd.observe.page import CONTENT_SECURITY_POLICY, PAGE
from ingestd.observe.page_data import PageInputs, gather_page, health_of
from ingestd.observe.view import DaemonView
from ingestd.units import format_size

log = get_logger("ingestd.observe.health")

EVALUATE_EVERY = 2.0
# The watcher restarts itself WATCH_RESTART_DELAY (5 s) after a failure; longer down is a problem.
WATCHER_GRACE = 15.0
LEDGER_ERROR_WINDOW = 120.0  # a ledger error this recent still makes /healthz fail
FREE_SPACE_TIMEOUT = 5.0  # statvfs on a hung network mount must not hold the monitor
CREDENTIALS_REFUSED = "credentials refused by the server: check valt.username and the password"


@dataclass
class LedgerView:
    """What the ledger said at the last look (a scrape, a health check or a tick)."""

    counts: dict[str, int] = field(default_factory=dict)
    backlog: Unsent = field(default_factory=lambda: Unsent(0, 0, None))
    error: str | None = None


class StatusService:
    """Health, metrics and alerts of one daemon."""

    def __init__(
        self,
        *,
        status: StatusConfig,
        watch: WatchConfig,
        ledger_path: Path,
        shared_ledger: bool = False,
        alerts: AlertsConfig,
        redact_paths: bool,
        token: str | None = None,
    ) -> None:
        self.status = status
        self.watch = watch
        self.ledger_path = ledger_path
        self.shared_ledger = shared_ledger
        self._token = token  # status.token_file: every path then needs it
        self.metrics = Metrics()
        self.redact_paths = redact_paths
        self.alerter = Alerter(alerts, redact_paths=redact_paths, metrics=self.metrics)
        self.telemetry = MetricsTelemetry(self.metrics, on_job_failed=self.alerter.job_failed)
        self.view = LedgerView()
        self.free_bytes: dict[int, int] = {}
        self.folders = FolderHealth(
            watch, metrics=self.metrics, alerter=self.alerter, redact_paths=redact_paths
        )
        self._daemon: DaemonView | None = None
        self._server: StatusServer | None = None
        self._ledger_error: tuple[float, str] | None = None
        self._watcher_seen: float | None = None  # set when the periodic task starts
        self._probing: asyncio.Future[_Probe] | None = None
        self._server_problem: str | None = None  # as last written to the ledger
        self.started_at = time.time()
        self._beat_at: float | None = None  # monotonic time of the last heartbeat written

    # --- the daemon's hooks -----------------------------------------------------------------

    def task_failed(self, task: str, exc: BaseException) -> None:
        """A supervised task failed; remember it if the ledger was the cause."""
        if isinstance(exc, LedgerUnwritable) and self.shared_ledger:
            return  # PostgreSQL away: said while it lasts (_shared_ledger_problems), not after
        if isinstance(exc, LEDGER_ERRORS):
            self._ledger_error = (time.monotonic(), f"{task}: {redact_text(str(exc))}")

    @contextlib.asynccontextmanager
    async def serving(self, daemon: DaemonView) -> AsyncIterator[None]:
        """Serve ``/healthz``, ``/metrics`` and the page on ``status.listen`` (if set) while
        inside."""
        self._daemon = daemon
        try:
            last_upload = await daemon.ledger.last_upload_at()
        except LEDGER_ERRORS:
            last_upload = None  # the ledger's own problem is reported; the gauge stays 0
        if last_upload is not None:
            self.telemetry.last_upload_known(last_upload)
        listen = self.status.listen
        if listen is not None:
            self._server = await start_status_server(self._routes, *listen, token=self._token)
        try:
            yield
        finally:
            if self._server is not None:
                await self._server.close()
                self._server = None

    async def run(self, stop: asyncio.Event) -> None:
        """Every few seconds: read the ledger, probe free space, raise alerts; then flush."""
        self._watcher_seen = time.monotonic()
        evaluated = asyncio.Event()  # the sender flushes and ends after the last look
        async with asyncio.TaskGroup() as group:
            group.create_task(self.alerter.run(evaluated))
            while not stop.is_set():
                await self._evaluate()
                await self._heartbeat()
                await wait_event(stop, EVALUATE_EVERY)
            try:
                await self._evaluate()  # a last look: ``--once`` can end right after a change
                await self._heartbeat(stopped=True)
            finally:
                evaluated.set()

    # --- evaluation -------------------------------------------------------------------------

    async def _evaluate(self) -> None:
        daemon = self._require_daemon()
        await self._refresh()
        self.free_bytes, states = await self._probe_folders()
        self.metrics.set_free_space(self.free_bytes)
        self.folders.update(states)
        self.alerter.backlog(self.view.backlog.files, self.view.backlog.oldest)
        self.alerter.auth(daemon.server.auth_failed)
        outage = daemon.server.outage
        self.alerter.server(outage.since, outage.describe())
        self.metrics.healthy.set(0 if self.problems() else 1)
        await self._record_server_problem(daemon)
        await self.folders.record(daemon.ledger)

    async def _record_server_problem(self, daemon: DaemonView) -> None:
        """Keep the ledger's word on what keeps us from the server in step (``ingestd
        status`` reads it); written only when it changes."""
        server = daemon.server
        problem = (
            server.redirect
            or (CREDENTIALS_REFUSED if server.auth_failed else None)
            or server.outage.describe()
            or None
        )
        if problem == self._server_problem:
            return
        since = server.outage.since if problem == server.outage.describe() else None
        try:
            await daemon.ledger.set_server_problem(problem, since or time.time())
        except LEDGER_ERRORS:
            return  # the ledger's own problem is reported; try again at the next look
        self._server_problem = problem

    async def _heartbeat(self, *, stopped: bool = False) -> None:
        """Every HEARTBEAT_EVERY s (and at the end, saying so): who we are and this look's
        health, for ``ingestd status`` (observe/heartbeat.py)."""
        now = time.monotonic()
        if not stopped and self._beat_at is not None and now - self._beat_at < HEARTBEAT_EVERY:
            return
        daemon = self._require_daemon()
        problems = self.problems()
        beat = make_beat(
            started_at=self.started_at,
            once=daemon.once,
            problems=problems,
            health=health_of(daemon, self._page_inputs(problems)),
            stopped_at=time.time() if stopped else None,
        )
        try:
            await daemon.ledger.write_heartbeat(beat)
        except LEDGER_ERRORS:
            return  # the ledger's own problem is reported; status then sees a stale beat
        self._beat_at = now

    async def _refresh(self) -> None:
        """Read counts and the unsent files from the ledger; set the ledger gauges."""
        daemon = self._require_daemon()
        try:
            counts = await daemon.ledger.counts()
            backlog = await daemon.ledger.unsent(busy=daemon.uploading())
        except LEDGER_ERRORS as exc:
            self.view.error = redact_text(str(exc))
            return
        self.view = LedgerView(counts, backlog)
        oldest = backlog.oldest
        self.metrics.set_jobs(counts)
        self.metrics.queue_depth.set(backlog.queued)
        self.metrics.oldest_waiting_age.set(
            0 if oldest is None else time.time() - oldest.discovered_at
        )
        self._set_daemon_gauges(daemon)

    def _set_daemon_gauges(self, daemon: DaemonView) -> None:
        server = daemon.server
        self.metrics.auth_failed.set(1 if server.auth_failed else 0)
        self.metrics.login_ok.set(0 if server.auth_failed or server.redirect else 1)
        self.metrics.set_server(server.outage.since)
        self.metrics.paused.set(1 if daemon.paused else 0)
        self.metrics.ledger_writable.set(1 if self._ledger_writable(daemon.ledger) else 0)
        # The dispatcher beats on the monotonic clock; the gauge says when, in wall time.
        self.metrics.heartbeat.set(time.time() - (time.monotonic() - daemon.heartbeat))

    async def _probe_folders(self) -> _Probe:
        """Free bytes per watch root (by index) and each root's state; the previous
        answer if a probe hangs (a hung network mount)."""
        if self._probing is None or self._probing.done():
            roots = list(self.watch.paths)
            require_mount = self.watch.require_mount
            self._probing = asyncio.ensure_future(
                asyncio.to_thread(_probe_roots, roots, require_mount)
            )
        try:
            return await asyncio.wait_for(asyncio.shield(self._probing), FREE_SPACE_TIMEOUT)
        except TimeoutError:
            log.warning("health.free_space_slow", timeout_s=FREE_SPACE_TIMEOUT)
            return self.free_bytes, self.folders.states

    def problems(self) -> list[str]:
        """What is wrong now, one sentence each; empty when healthy."""
        daemon = self._require_daemon()
        found = [
            *self._watcher_problems(daemon),
            *self.folders.problems(),
            *self._ledger_problems(),
            *self._shared_ledger_problems(daemon.ledger),
        ]
        if daemon.server.auth_failed:
            found.append(CREDENTIALS_REFUSED)
        if daemon.server.redirect is not None:
            found.append(daemon.server.redirect)
        if daemon.server.outage.since is not None:
            found.append(daemon.server.outage.describe())
        elif daemon.server.last_contact_ok is False:
            found.append(
                "the last attempt to reach the Valt server failed "
                "(connection error, timeout or 5xx answer)"
            )
        minimum = self.watch.min_free
        for index, free in sorted(self.free_bytes.items()):
            if free < minimum:
                found.append(
                    f"low free space: watch.paths[{index}] has {format_size(free)} free, "
                    f"less than watch.min_free ({format_size(minimum)})"
                )
        return found

    def _watcher_problems(self, daemon: DaemonView) -> list[str]:
        if daemon.once or daemon.watcher_alive is None or self._watcher_seen is None:
            return []  # --once watches nothing; events off on purpose; not started yet
        now = time.monotonic()
        if daemon.watcher_alive:
            self._watcher_seen = now
            return []
        down = now - self._watcher_seen
        if down < WATCHER_GRACE:
            return []
        return [self._watcher_down(down)]

    def _watcher_down(self, down: float) -> str:
        """Which folders go unwatched, and why when it shows: a folder that is not there."""
        named = [
            (
                f"watch.paths[{index}]"
                if self.alerter.redact_paths
                else f"watch.paths[{index}] {path}",
                path,
            )
            for index, path in enumerate(self.watch.paths)
        ]
        missing = [name for name, path in named if not path.is_dir()]
        if missing and len(missing) == len(named):
            return (
                f"the folder watcher is not running (for {down:.0f} s): {', '.join(missing)} "
                "does not exist or is not a folder (is the share mounted?)"
            )
        return (
            f"the folder watcher is not running for {', '.join(name for name, _ in named)} "
            f"(for {down:.0f} s; the log's watcher.failed says why): files are still found by "
            "the rescan every watch.rescan_interval"
        )

    def _shared_ledger_problems(self, ledger: JobLedger) -> list[str]:
        """A shared ledger that does not answer: "the shared ledger is unreachable since ..."
        (its connection's words; the daemon claims nothing until it answers)."""
        if ledger.shared and ledger.write_problem is not None:
            return [ledger.write_problem]
        return []

    def _ledger_access_ok(self) -> bool:
        if self.shared_ledger:
            return True  # no file of its own: _shared_ledger_problems says what is wrong
        ledger = self.ledger_path
        folder_ok = os.access(ledger.parent, os.W_OK | os.X_OK)
        return folder_ok and (not ledger.exists() or os.access(ledger, os.W_OK))

    def _ledger_writable(self, ledger: JobLedger) -> bool:
        """Whether the ledger takes writes now: its last write worked (ledger/watch.py
        probes it again after a failure) and this user may write its file and folder."""
        works = ledger.writable.is_set() and ledger.write_problem is None
        return works and self._ledger_access_ok()

    def _ledger_problems(self) -> list[str]:
        found = []
        if not self._ledger_access_ok():
            found.append("the ledger is not writable: check ledger.path and its folder")
        if self.view.error is not None:
            found.append(f"the ledger cannot be read: {self.view.error}")
        if self._ledger_error is not None:
            at, message = self._ledger_error
            if time.monotonic() - at < LEDGER_ERROR_WINDOW:
                found.append(f"a ledger write failed {time.monotonic() - at:.0f} s ago: {message}")
        return found

    def _require_daemon(self) -> DaemonView:
        if self._daemon is None:
            raise RuntimeError("StatusService.serving() has not been entered")
        return self._daemon

    # --- HTTP -------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._page_data)

    async def _healthz(self, _request: web.Request) -> web.Response:
        daemon = self._require_daemon()
        await self._refresh()
        problems = self.problems()
        self.metrics.healthy.set(0 if problems else 1)
        oldest = self.view.backlog.oldest
        body: dict[str, Any] = {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "mode": "once" if daemon.once else "daemon",
            "paused": daemon.paused,
            "uploading": len(daemon.uploading()),
            "backlog": self.view.backlog.files,
            "failed": self.view.counts.get(State.FAILED.value, 0),
            "oldest_waiting_s": None
            if oldest is None
            else round(time.time() - oldest.discovered_at),
            "last_upload_at": self.telemetry.last_upload_at,
        }
        return web.json_response(body, status=503 if problems else 200)

    async def _metrics(self, _request: web.Request) -> web.Response:
        await self._refresh()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", headers=_PAGE_HEADERS)

    async def _page_data(self, _request: web.Request) -> web.Response:
        daemon = self._require_daemon()
        await self._refresh()
        inputs = self._page_inputs(self.problems())
        try:
            body = await gather_page(daemon, inputs)
        except LEDGER_ERRORS as exc:
            body = {"error": f"the ledger cannot be read: {redact_text(str(exc))}"}
            return web.json_response(body, status=503, headers=_PAGE_HEADERS)
        return web.json_response(body, headers=_PAGE_HEADERS)

    def _page_inputs(self, problems: Sequence[str]) -> PageInputs:
        """What the page and the heartbeat's health look take besides the daemon."""
        return PageInputs(
            counts=self.view.counts,
            problems=problems,
            watch_paths=self.watch.paths,
            free_bytes=self.free_bytes,
            min_free=self.watch.min_free,
            folder_labels=[self.watch.label(i) for i in range(len(self.watch.paths))],
            folder_states=[state.value for state in self.folders.states],
            ledger_path=self.ledger_path,
            ledger_problems=self._ledger_problems(),
            last_upload_at=self.telemetry.last_upload_at,
            redact_paths=self.redact_paths,
        )


# The page shows what is on this machine: never cached, never framed, nothing from outside.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


_Probe = tuple[dict[int, int], list[FolderState]]


def _probe_roots(roots: Sequence[Path], require_mount: bool) -> _Probe:
    """Bytes available to this user on each present root's volume (by index), and each
    root's state; in a worker thread."""
    free = {}
    states = folder_states(roots, require_mount=require_mount)
    for index, root in enumerate(roots):
        if states[index] != FolderState.PRESENT:
            continue  # an unmounted share's free space is its mount point's, not the share's
        try:
            stats = os.statvfs(root)
        except OSError:
            continue
        free[index] = stats.f_bavail * stats.f_frsize
    return free, states
