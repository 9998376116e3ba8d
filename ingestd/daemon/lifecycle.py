"""The daemon's lifecycle: ``run`` -> startup / serve / shutdown.

Tasks, each with a handle in one TaskGroup: the settle loop, folder events,
periodic rescans, the dispatcher feeding an ``asyncio.Queue`` of job ids
(oldest file first) to N upload workers, the confirmer, the partial-record
sweeper and the control poller (pause/resume from the command line).

Signals only set an event. The first SIGTERM/SIGINT stops taking files and
lets chunks in flight finish within ``upload.drain_timeout``; a second one
exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ingestd.aio import wait_event
from ingestd.config.network import CLEARTEXT_DETAIL, cleartext_password
from ingestd.config.schema import Config
from ingestd.daemon.progress import ProgressLine
from ingestd.daemon.sdnotify import Notifier
from ingestd.disk.judged import OpenRule
from ingestd.errors import LedgerUnwritable
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.watcher import Intake
from ingestd.ledger.store import TERMINAL, Job, Ledger, State
from ingestd.ledger.watch import LedgerWatch, wait_writable
from ingestd.logs import get_logger
from ingestd.observe.health import StatusService
from ingestd.telemetry import Telemetry
from ingestd.units import format_size
from ingestd.upload.after_upload import apply_after_upload, housekeeping
from ingestd.upload.confirm import Confirmer, PartialSweeper
from ingestd.upload.job import Uploader
from ingestd.upload.naming import RecordNamer
from ingestd.upload.pacing import Pacer
from ingestd.valt.client import ValtClient
from ingestd.valt.shares import open_share_directory

log = get_logger("ingestd.daemon.lifecycle")

DISPATCH_POLL = 1.0
CONTROL_POLL = 2.0
ONCE_POLL = 0.2
TASK_RESTART_DELAY = 5.0
STATUS_EVERY = 5.0
HOUSEKEEPING_EVERY = 60.0
FINAL_SWEEP_TIMEOUT = 15.0
# The dispatcher beats at least every DISPATCH_POLL; older than this means the loop is stuck.
HEARTBEAT_STALE = 10.0


@dataclass
class RunResult:
    """What ``run --once`` reports: exit code and the jobs that did not finish."""

    exit_code: int = 0
    not_done: list[Job] = field(default_factory=list)
    message: str | None = None


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
        self.dispatch_wake = asyncio.Event()
        self.active: set[int] = set()
        self.worker_jobs: dict[int, int | None] = {}
        self.paused = False
        self.result = RunResult()
        self._signals = 0
        self.notifier = Notifier()
        # /healthz, /metrics and webhook alerts (issue 5); the engine reports to its telemetry.
        self.status = StatusService(config, token=status_token)
        self.telemetry: Telemetry = self.status.telemetry
        self.heartbeat = time.monotonic()
        # Why the ledger takes no writes (None: it does). Set by ledger/watch.py; while set,
        # no new job starts; /healthz reports it.
        self.ledger_error: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Start, serve until stopped, shut down; returns the outcome."""
        self.ledger = await Ledger.open(self.config.ledger.path)
        try:
            async with ValtClient(
                base_url=self.config.valt.url,
                username=self.config.valt.username,
                password=self.password,
                timeout=self.config.valt.timeout,
                verify_tls=self.config.valt.verify_tls,
                ca_file=self.config.valt.ca_file,
                on_contact=self.telemetry.server_contact,
            ) as client:
                self.client = client
                # Before workers start: an unknown share name is a config error (exit 2).
                self.directory = await open_share_directory(client, self.config.record)
                self._startup()
                async with self.status.serving(self):  # binds status.listen
                    await self._serve()
        finally:
            await self.ledger.close()
        return self.result

    def _startup(self) -> None:
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
        self.intake = Intake(
            config=self.config,
            ledger=self.ledger,
            checks=self.checks,
            is_active=self.active.__contains__,
            on_ready=self.dispatch_wake.set,
        )
        self.uploader = Uploader(
            config=self.config,
            ledger=self.ledger,
            client=self.client,
            namer=RecordNamer(
                self.config.record,
                self.directory,
                settle=self.config.watch.settle,
                rule=self.open_rule,
            ),
            stopping=self.stopping,
            telemetry=self.telemetry,
            on_change=self.dispatch_wake.set,
            # upload.bandwidth_limit: one bucket for all workers; None when unlimited.
            pacer=Pacer.for_limit(self.config.upload.bandwidth_limit),
        )
        self.confirmer = Confirmer(
            config=self.config,
            ledger=self.ledger,
            client=self.client,
            after_done=lambda job: apply_after_upload(self.config, self.ledger, job),
            telemetry=self.telemetry,
        )
        self.sweeper = PartialSweeper(config=self.config, ledger=self.ledger, client=self.client)
        self.ledger_watch = LedgerWatch(self.config.ledger, self.ledger, self._on_ledger_problem)
        self.queue: asyncio.Queue[int] = asyncio.Queue()
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
        log.info(
            "daemon.started",
            pid=os.getpid(),
            mode="once" if self.once else "daemon",
            workers=self.config.upload.workers,
            ledger=str(self.config.ledger.path),
        )

    async def _serve(self) -> None:
        self.notifier.ready("scanning the watch folders")
        with contextlib.suppress(LedgerUnwritable):  # the ledger watch reports it
            await self.intake.scan("startup")
        self.paused = await self.ledger.is_paused()
        scope = [
            job.id for job in await self.ledger.jobs_in([s for s in State if s not in TERMINAL])
        ]
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
            ]
            if not self.once:
                background += [
                    spawn(self._supervise("events", self.intake.run_events, self.stopping)),
                    spawn(self._supervise("rescans", self.intake.run_rescans, self.stopping)),
                ]
            else:
                spawn(self._watch_once(scope))
            workers = [spawn(self._worker(n)) for n in range(self.config.upload.workers)]
            spawn(self._dispatch())
            await self.stopping.wait()
            await self._drain(workers)
            if self.once and self._signals == 0:
                await self._sweep_before_exit()
            self.stop.set()
        log.info("daemon.stopped", exit_code=self.result.exit_code)

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
            log.warning("daemon.forced_exit", signal=sig.name)
            sys.stdout.flush()
            os._exit(1)
        log.info(
            "daemon.stopping", signal=sig.name, drain_timeout_s=self.config.upload.drain_timeout
        )
        self.notifier.stopping(f"draining: {len(self.active)} upload(s) finish their chunk")
        self.stopping.set()
        self.dispatch_wake.set()

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Let chunks in flight finish (bounded by drain_timeout), then cancel the rest."""
        started = time.monotonic()
        busy = []
        for number, task in enumerate(workers):
            if self.worker_jobs.get(number) is None:
                task.cancel()  # idle: waiting for a job that will not come
            else:
                busy.append(task)
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=self.config.upload.drain_timeout)
            for task in pending:
                task.cancel()
            log.info(
                "daemon.drained",
                finished=len(busy) - len(pending),
                cancelled=len(pending),
                seconds=round(time.monotonic() - started, 3),
            )

    # --- dispatch and workers ------------------------------------------------------------------

    async def _dispatch(self) -> None:
        """Hand due jobs to free workers, oldest file first."""
        while not self.stopping.is_set():
            self.heartbeat = time.monotonic()
            # Each worker has its next job waiting in the queue while it works on one, so
            # it goes on at once instead of after a ledger round trip (small files: bench 4).
            free = 2 * self.config.upload.workers - len(self.active)
            blocked = (
                self.paused
                or self.ledger_error is not None
                or not self.ledger.writable.is_set()  # a write just failed: the watch reports it
                or self.client.login_blocked_for() > 0
            )
            wait = DISPATCH_POLL
            if free > 0 and not blocked:
                due = await self.ledger.due_jobs(time.time(), free, sorted(self.active))
                for job in due:
                    self.active.add(job.id)
                    self.queue.put_nowait(job.id)
                # A retry due sooner than the next poll is not kept waiting for it. (With
                # every slot filled, the next free worker wakes this loop anyway.)
                next_due = (
                    None if len(due) == free else await self.ledger.next_due(sorted(self.active))
                )
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due - time.time()))
            self.dispatch_wake.clear()
            await wait_event(self.dispatch_wake, wait)

    async def _worker(self, number: int) -> None:
        self.worker_jobs[number] = None
        while not self.stopping.is_set():
            job_id = await self.queue.get()
            if self.stopping.is_set():
                self.active.discard(job_id)
                return
            if self.paused:  # paused while the job waited in the queue: it stays queued
                self.active.discard(job_id)
                continue
            self.worker_jobs[number] = job_id
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
                self.worker_jobs[number] = None
                self.active.discard(job_id)
                self.confirmer.wake.set()
                if self.ledger.deletions_queued != queued_deletions:
                    self.sweeper.wake.set()
                self.dispatch_wake.set()

    def _on_ledger_problem(self, problem: str | None) -> None:
        self.ledger_error = problem
        self.dispatch_wake.set()

    async def _control(self, stop: asyncio.Event) -> None:
        """Obey ``ingestd pause``/``resume`` (written to the ledger) within seconds."""
        while not stop.is_set():
            await wait_event(stop, CONTROL_POLL)
            paused = await self.ledger.is_paused()
            if paused != self.paused:
                self.paused = paused
                log.info("daemon.paused" if paused else "daemon.resumed")
                self.dispatch_wake.set()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """After-upload actions a crash interrupted, and ``keep_for`` expiry, every minute."""
        while not stop.is_set():
            await housekeeping(self.config, self.ledger)
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

    def in_workers(self) -> set[int]:
        """The jobs in a worker's hands now (not those queued for the next free worker)."""
        return {job_id for job_id in self.worker_jobs.values() if job_id is not None}

    async def status_line(self) -> str:
        """One line a person reads in ``systemctl status``."""
        if self.client.auth_failed:
            return "credentials refused by the server: check valt.username and the password"
        if self.client.redirect is not None:
            return self.client.redirect
        files, left = await self.ledger.backlog()
        if self.paused:
            return f"paused ({files} files not yet uploaded); `ingestd resume` to go on"
        if not files:
            return "idle: every file is uploaded"
        busy = len(self.in_workers())
        if not busy:
            return f"{files} files settling or being confirmed, {format_size(left)} to send"
        return f"uploading {busy} of {files} files, {format_size(left)} left"

    # --- run --once ----------------------------------------------------------------------------

    async def _watch_once(self, scope: list[int]) -> None:
        """End ``--once`` when every job in scope is finished, or only unfinished files remain."""
        deadline = time.monotonic() + self.max_wait
        progress = ProgressLine(sys.stderr) if self.show_progress else None
        jobs: list[Job] = []
        while not self.stopping.is_set():
            jobs = [job for job in [await self.ledger.find_job(i) for i in scope] if job]
            if progress is not None:
                progress.draw(jobs)
            live = [job for job in jobs if job.state not in TERMINAL]
            if self.client.auth_failed:
                self.result = RunResult(1, live, "the server refused the credentials")
                break
            if self.client.redirect is not None:
                self.result = RunResult(1, live, self.client.redirect)
                break
            only_waiting = all(job.state == State.WAITING for job in live)
            if not live or (only_waiting and time.monotonic() >= deadline):
                not_done = [job for job in jobs if job.state not in (State.DONE, State.SKIPPED)]
                self.result = RunResult(1 if not_done else 0, not_done)
                break
            await asyncio.sleep(ONCE_POLL)
        if progress is not None:
            progress.close(jobs)
        self.stopping.set()
        self.dispatch_wake.set()
