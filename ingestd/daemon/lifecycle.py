"""The daemon's lifecycle: ``run`` -> ``startup`` -> ``main_loop`` -> ``shutdown``.

Tasks, each with a handle in one TaskGroup: the settle loop, folder events,
periodic rescans, the worker pool (pool.py: a dispatcher and N upload
workers), the confirmer, the partial-record sweeper and the control poller
(pause/resume from the command line).

Signals only set an event. The first SIGTERM/SIGINT stops taking files and
lets chunks in flight finish within ``upload.drain_timeout``; a second one
sets ``force_exit``: the main loop cancels what still runs (chunks in flight
too), ``shutdown`` closes the ledger, and the process exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from ingestd.aio import wait_event
from ingestd.config.network import CLEARTEXT_DETAIL, cleartext_password
from ingestd.config.schema import Config
from ingestd.daemon.once import RunResult, watch_once
from ingestd.daemon.pool import WorkerPool
from ingestd.daemon.progress import ProgressLine, show_progress
from ingestd.daemon.sdnotify import Notifier
from ingestd.disk.judged import OpenRule
from ingestd.errors import LedgerUnwritable
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.watcher import Intake
from ingestd.ledger.api import open_ledger
from ingestd.ledger.model import TERMINAL, State
from ingestd.ledger.watch import CHECK_EVERY as LEDGER_CHECK_EVERY
from ingestd.ledger.watch import LedgerWatch, wait_writable
from ingestd.logs import get_logger
from ingestd.observe.health import StatusService
from ingestd.telemetry import Telemetry
from ingestd.units import format_size
from ingestd.upload.after_upload import (
    Belongings,
    apply_once,
    housekeeping,
    set_aside_once,
)
from ingestd.upload.confirm import Confirmer, PartialSweeper
from ingestd.upload.job import Uploader
from ingestd.upload.naming import RecordNamer
from ingestd.upload.pacing import Pacer
from ingestd.upload.retention import FORGET_EVERY, forget_old
from ingestd.valt.client import ValtClient
from ingestd.valt.connect import client_for
from ingestd.valt.shares import open_share_directory

log = get_logger("ingestd.daemon.lifecycle")

CONTROL_POLL = 2.0
TASK_RESTART_DELAY = 5.0
STATUS_EVERY = 5.0
HOUSEKEEPING_EVERY = 60.0
FINAL_SWEEP_TIMEOUT = 15.0
# The dispatcher beats at least every pool.DISPATCH_POLL; older than this means the loop is stuck.
HEARTBEAT_STALE = 10.0
EXIT_FORCED = 1  # a second signal (README: "A second one exits 1")
FORCED_EXIT_BACKSTOP = 3.0  # after a second signal, at most this long to close cleanly


class Daemon:
    """One daemon: one ledger, one Valt client, one pool of upload workers."""

    def __init__(
        self,
        config: Config,
        password: str,
        *,
        once: bool = False,
        max_wait: float = 600.0,
        show_progress: bool = False,
        status_token: str | None = None,
    ) -> None:
        self.show_progress = show_progress
        self.config = config
        self.password = password
        self.once = once
        self.max_wait = max_wait
        self.stop = asyncio.Event()  # everything winds down
        self.stopping = asyncio.Event()  # no new files; workers stop after their chunk
        self.force_exit = asyncio.Event()  # a second signal: stop waiting for anything
        self.dispatch_wake = asyncio.Event()
        self.paused = False
        self.result = RunResult()
        self._signals = 0
        self.notifier = Notifier()
        # /healthz, /metrics and webhook alerts (issue 5); the engine reports to its telemetry.
        self.status = StatusService(
            status=config.status,
            watch=config.watch,
            ledger_path=config.ledger.path,
            shared_ledger=config.ledger.shared,
            alerts=config.alerts,
            redact_paths=config.log.redact_paths,
            token=status_token,
        )
        self.telemetry: Telemetry = self.status.telemetry
        self.heartbeat = time.monotonic()
        # Why the ledger takes no writes (None: it does). Set by ledger/watch.py; while set,
        # no new job starts; /healthz reports it.
        self.ledger_error: str | None = None
        # What startup opened, closed by shutdown() in reverse order (the ledger last).
        self._opened = contextlib.AsyncExitStack()

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Start, serve until stopped, shut down; returns the outcome."""
        try:
            await self.startup()
            await self.main_loop()
        finally:
            await self.shutdown()
        return self.result

    def request_stop(self) -> None:
        """Stop taking files and wind down, as the first SIGTERM does (``ingestd demo``)."""
        self.stopping.set()
        self.dispatch_wake.set()

    async def startup(self) -> None:
        """Open the ledger and the client, check the shares, build the parts, serve health."""
        self.ledger = await open_ledger(self.config, daemon=True)
        self._opened.push_async_callback(self.ledger.close)
        self.client = await self._opened.enter_async_context(
            client_for(
                self.config.valt,
                self.password,
                on_contact=self.telemetry.server_contact,
                outage_retry=(self.config.upload.backoff_initial, self.config.upload.backoff_max),
            )
        )
        # Before workers start: an unknown share name is a config error (exit 2).
        self.directory = await open_share_directory(self.client, self.config.record)
        self._build_parts()
        self._handle_signals()
        log.info(
            "daemon.started",
            pid=os.getpid(),
            mode="once" if self.once else "daemon",
            workers=self.config.upload.workers,
            ledger=self.ledger.where,
            node=self.ledger.node,
        )
        await self._opened.enter_async_context(self.status.serving(self))  # binds status.listen

    async def main_loop(self) -> None:
        """Serve until stopped; a second signal cancels whatever is still running."""
        serving = asyncio.create_task(self._serve())
        forced = asyncio.create_task(self.force_exit.wait())
        try:
            await asyncio.wait([serving, forced], return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()
            if not serving.done():
                serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving  # raises what the loop raised, if it ended on its own
        if self.force_exit.is_set():
            self.result = RunResult(EXIT_FORCED, self.result.not_done, self.result.message)
            log.warning("daemon.stopped", exit_code=self.result.exit_code, forced=True)

    async def shutdown(self) -> None:
        """Close the health server, the client and the ledger (committed work stays)."""
        await self._opened.aclose()

    def _build_parts(self) -> None:
        if not self.config.valt.verify_tls:
            log.warning("tls.verification_off", detail="valt.verify_tls is false")
        if cleartext_password(self.config.valt):
            log.warning("tls.cleartext_password", detail=CLEARTEXT_DETAIL)
        # How every watched file is looked at and opened (judged.py).
        self.open_rule = OpenRule.for_watch(
            self.config.watch.paths, self.config.watch.follow_symlinks
        )
        self.checks = FinishedChecks(
            check_open_writers=self.config.watch.check_open_writers,
            check_container=self.config.watch.check_container,
            done_marker=self.config.watch.done_marker,
            log=lambda event, fields: log.info(event, **fields),
            rule=self.open_rule,
        )
        # Which files travel with a video when it is moved or deleted (after_upload.py).
        self.belongings = Belongings(self.config.watch.done_marker, self.config.record.sidecar)
        # One after-upload step at a time: the confirmer and housekeeping may reach one job.
        self.after_lock = asyncio.Lock()
        after = self.config.after_upload
        self.uploader = Uploader(
            upload=self.config.upload,
            rule=self.open_rule,
            ledger=self.ledger,
            client=self.client,
            namer=RecordNamer(
                self.config.record,
                self.directory,
                settle=self.config.watch.settle,
                rule=self.open_rule,
            ),
            stopping=self.stopping,
            set_aside=lambda job, why, detail: set_aside_once(
                after, self.belongings, self.ledger, job, why, detail, self.after_lock
            ),
            telemetry=self.telemetry,
            on_change=self._wake_dispatcher,
            require_mount=self.config.watch.require_mount,
            # upload.bandwidth_limit: one bucket for all workers; None when unlimited.
            pacer=Pacer.for_limit(self.config.upload.bandwidth_limit),
        )
        self.pool = WorkerPool(
            workers=self.config.upload.workers,
            ledger=self.ledger,
            uploader=self.uploader,
            stopping=self.stopping,
            paused=lambda: self.paused,
            blocked=self._blocked,
            on_beat=self._beat,
            on_job_end=self._job_ended,
            wake=self.dispatch_wake,
        )
        self.intake = Intake(
            watch=self.config.watch,
            sidecars=self.config.record.sidecar,
            ledger=self.ledger,
            checks=self.checks,
            is_active=self.pool.in_progress.__contains__,
            on_ready=self._wake_dispatcher,
        )
        self.confirmer = Confirmer(
            upload=self.config.upload,
            after_upload=after,
            ledger=self.ledger,
            client=self.client,
            after_done=lambda job: apply_once(
                after, self.belongings, self.ledger, job, self.after_lock
            ),
            telemetry=self.telemetry,
        )
        self.sweeper = PartialSweeper(
            upload=self.config.upload, ledger=self.ledger, client=self.client
        )
        self.ledger_watch = LedgerWatch(
            self.config.ledger, self.ledger, self._on_ledger_problem, self._ledger_outdated
        )

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            # No live reload: a SIGHUP must not kill the daemon mid-upload either.
            loop.add_signal_handler(
                signal.SIGHUP,
                lambda: log.warning(
                    "daemon.reload_unsupported",
                    detail="configuration changes need a restart (systemctl restart ingestd)",
                ),
            )

    async def _serve(self) -> None:
        self.notifier.ready("scanning the watch folders")
        with contextlib.suppress(LedgerUnwritable):  # the ledger watch reports it
            await self.intake.scan("startup")
        self.paused, scope = await self._first_look()
        background: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as group:
            spawn = group.create_task
            background += [
                spawn(self._supervise("settle", self.intake.run_settle, self.stop)),
                spawn(self._supervise("confirmer", self.confirmer.run, self.stop)),
                spawn(self._supervise("sweeper", self.sweeper.run, self.stop)),
                spawn(self._supervise("control", self._control, self.stop)),
                spawn(self._supervise("service", self._service_status, self.stop)),
                spawn(self._supervise("health", self.status.run, self.stop)),
                spawn(self._supervise("housekeeping", self._housekeeping, self.stop)),
                spawn(self._supervise("ledger", self.ledger_watch.run, self.stop)),
                spawn(self._supervise("server", self._watch_server, self.stop)),
            ]
            if not self.once:
                background += [
                    spawn(self._supervise("events", self.intake.run_events, self.stopping)),
                    spawn(self._supervise("rescans", self.intake.run_rescans, self.stopping)),
                ]
                if self.show_progress:
                    background.append(spawn(self._supervise("progress", self._progress, self.stop)))
            else:
                spawn(self._watch_once(scope))
            workers = [spawn(self.pool.worker(n)) for n in range(self.config.upload.workers)]
            spawn(self.pool.dispatch())
            await self.stopping.wait()
            await self.pool.drain(workers, self.config.upload.drain_timeout)
            if self.once and self._signals == 0:
                await self._sweep_before_exit()
            self.stop.set()
        log.info("daemon.stopped", exit_code=self.result.exit_code)

    async def _first_look(self) -> tuple[bool, list[int]]:
        """The pause flag and the jobs not finished, before the loops start: a shared ledger
        that does not answer now is waited for (probed every CHECK_EVERY), not the end."""
        while True:
            try:
                paused = await self.ledger.is_paused()
                live = await self.ledger.jobs_in([s for s in State if s not in TERMINAL])
                return paused, [job.id for job in live]
            except LedgerUnwritable as exc:
                log.warning("daemon.ledger_wait", error=str(exc))
                while not await self.ledger.probe_write():
                    if await wait_event(self.stopping, LEDGER_CHECK_EVERY):
                        return False, []

    async def _sweep_before_exit(self) -> None:
        """``--once`` leaves no partial record behind if the server lets it delete them."""
        deadline = time.monotonic() + FINAL_SWEEP_TIMEOUT
        while await self.ledger.pending_deletions() and time.monotonic() < deadline:
            if not await self.sweeper.sweep():
                return
            await asyncio.sleep(0.5)

    async def _supervise(
        self, name: str, loop: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run a long-lived loop; if it fails (a bug, a full disk), log it and start it again."""
        while not stop.is_set():
            try:
                await loop(stop)
                return
            except LedgerUnwritable as exc:
                # Not a bug: the ledger watch reports it once; go on when writes work again.
                self.status.task_failed(name, exc)
                await wait_writable(self.ledger, stop)
            except Exception as exc:
                log.exception("daemon.task_failed", task=name, restart_in_s=TASK_RESTART_DELAY)
                self.status.task_failed(name, exc)
                await wait_event(stop, TASK_RESTART_DELAY)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            if not self.force_exit.is_set():
                log.warning("daemon.forced_exit", signal=sig.name)
                self.force_exit.set()
                # The clean way out closes the ledger; should a hung file system or server
                # keep it from ending, the process still goes (a WAL ledger survives that).
                backstop = threading.Timer(FORCED_EXIT_BACKSTOP, _exit_now)
                backstop.daemon = True
                backstop.start()
            return
        log.info(
            "daemon.stopping", signal=sig.name, drain_timeout_s=self.config.upload.drain_timeout
        )
        busy = len(self.pool.in_progress.in_workers())
        self.notifier.stopping(f"draining: {busy} upload(s) finish their chunk")
        self.request_stop()

    # --- what the parts call back ------------------------------------------------------------

    def _wake_dispatcher(self) -> None:
        self.dispatch_wake.set()

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def _blocked(self) -> bool:
        """No new job starts now (jobs already in a worker's hands go on)."""
        return (
            self.paused
            or self.ledger_error is not None
            or not self.ledger.writable.is_set()  # a write just failed: the watch reports it
            or self.client.login_blocked_for() > 0
            or self.client.outage.down  # only the outage watch talks to the server
        )

    async def _watch_server(self, stop: asyncio.Event) -> None:
        """Probe during an outage (outage.py); work goes on at once when it ends."""
        self.client.outage.on_end = self._server_back
        await self.client.outage.watch(stop)

    def _server_back(self) -> None:
        self._wake_dispatcher()
        self.confirmer.wake.set()
        self.sweeper.wake.set()

    def _job_ended(self, deletions_queued: bool) -> None:
        self.confirmer.wake.set()
        if deletions_queued:
            self.sweeper.wake.set()

    def _ledger_outdated(self, why: str) -> None:
        """A shared schema newer than this ingestd: stop, exit 1, say to upgrade."""
        self.result = RunResult(1, self.result.not_done, why)
        self.request_stop()

    def _on_ledger_problem(self, problem: str | None) -> None:
        self.ledger_error = problem
        self._wake_dispatcher()

    async def _control(self, stop: asyncio.Event) -> None:
        """Obey ``ingestd pause``/``resume`` (written to the ledger) within seconds."""
        while not stop.is_set():
            await wait_event(stop, CONTROL_POLL)
            paused = await self.ledger.is_paused()
            if paused != self.paused:
                self.paused = paused
                log.info("daemon.paused" if paused else "daemon.resumed")
                self._wake_dispatcher()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """After-upload actions a crash interrupted, and ``keep_for`` expiry, every minute;
        ``ledger.forget_after`` at start-up, then hourly."""
        forget_after, forget_due = self.config.ledger.forget_after, 0.0
        while not stop.is_set():
            await housekeeping(
                self.config.after_upload, self.belongings, self.ledger, self.after_lock
            )
            if forget_after is not None and time.monotonic() >= forget_due:
                await forget_old(self.ledger, forget_after)
                forget_due = time.monotonic() + FORGET_EVERY
            await wait_event(stop, HOUSEKEEPING_EVERY)

    async def _service_status(self, stop: asyncio.Event) -> None:
        """STATUS= lines for ``systemctl status``, and WATCHDOG=1 while the loop is alive.

        The watchdog ping is sent only while the dispatcher's heartbeat advances,
        so a wedged main loop stops the pings and systemd restarts the service.
        """
        interval = min(STATUS_EVERY, (self.notifier.watchdog_interval or 10.0) / 2)
        last_status = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now - self.heartbeat < HEARTBEAT_STALE or self.stopping.is_set():
                self.notifier.watchdog()
            draining = self.stopping.is_set()  # keep the STOPPING status visible
            if self.notifier.enabled and not draining and now - last_status >= STATUS_EVERY:
                last_status = now
                line = await self.status_line()
                if not self.stopping.is_set():  # a drain began meanwhile: keep its status
                    self.notifier.status(line)
            await wait_event(stop, interval)

    # --- what health reads (observe/view.py's DaemonView) -----------------------------------

    @property
    def server(self) -> ValtClient:
        return self.client

    @property
    def watcher_alive(self) -> bool | None:
        return self.intake.watcher_alive

    def uploading(self) -> set[int]:
        return self.pool.in_progress.in_workers()

    async def status_line(self) -> str:
        """One line a person reads in ``systemctl status``."""
        if self.client.auth_failed:
            return "credentials refused by the server: check valt.username and the password"
        if self.client.redirect is not None:
            return self.client.redirect
        if self.client.outage.down:
            return self.client.outage.describe()
        files, left = await self.ledger.backlog()
        if self.paused:
            return f"paused ({files} files not yet uploaded); `ingestd resume` to go on"
        if not files:
            return "idle: every file is uploaded"
        busy = len(self.uploading())
        if not busy:
            return f"{files} files settling or being confirmed, {format_size(left)} to send"
        return f"uploading {busy} of {files} files, {format_size(left)} left"

    async def _progress(self, stop: asyncio.Event) -> None:
        await show_progress(self.ledger, sys.stderr, stop)

    # --- run --once ----------------------------------------------------------------------------

    async def _watch_once(self, scope: list[int]) -> None:
        """End ``--once`` when every job in scope is finished, or only unfinished files remain."""
        progress = ProgressLine(sys.stderr) if self.show_progress else None
        outcome = await watch_once(
            self.ledger, self.client, scope, self.max_wait, self.stopping, progress
        )
        if outcome is not None:
            self.result = outcome
        self.request_stop()


def _exit_now() -> None:
    sys.stdout.flush()
    os._exit(EXIT_FORCED)
