"""The daemon's eye on its ledger: can it be written, and its daily backup.

Why a task of its own: when the ledger's disk fills up or its folder turns
read-only, every loop that writes would fail and be restarted every few
seconds, each time with a traceback, while workers kept taking jobs whose
progress could not be recorded. Instead the first failure (noted by the
ledger itself, see ``connection.Guarded``) wakes this task, which logs
``ledger.unwritable`` once, sets the daemon's ``ledger_error`` (the
dispatcher takes no new job while it is set; ``/healthz`` shows it), and
probes every few seconds until the ledger takes writes again
(``ledger.writable``). Nothing committed is lost meanwhile: a job whose
write failed keeps its last committed state and resumes from there.

The folder is also checked by itself: SQLite keeps writing through files it
already has open, so a folder that turned read-only shows up first as
backups and a restart failing. It counts as a problem at once.

Backups: one at start-up if the newest is older than a day (or there is
none), then one a day; a failed backup is logged and tried again in an hour.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from ingestd.aio import wait_any
from ingestd.config.schema import LedgerConfig
from ingestd.errors import LedgerError
from ingestd.ledger.api import JobLedger
from ingestd.ledger.backup import BACKUP_EVERY, make_backup, next_backup_due
from ingestd.logs import get_logger

log = get_logger("ingestd.ledger.store")

CHECK_EVERY = 2.0
BACKUP_RETRY = 3600.0


class LedgerWatch:
    """One supervised task: writability of the ledger, and its backups."""

    def __init__(
        self,
        config: LedgerConfig,
        ledger: JobLedger,
        on_problem: Callable[[str | None], None] = lambda _problem: None,
        on_fatal: Callable[[str], None] = lambda _why: None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.on_problem = on_problem
        self.on_fatal = on_fatal  # the daemon stops, exit 1 (a shared schema newer than it)
        self.problem: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        # A shared ledger's backups are PostgreSQL's (pg_dump, or the site's own).
        backups = self.config.backups and not self.ledger.shared
        next_backup = next_backup_due(self.ledger.path) if backups else None
        while not stop.is_set():
            await self.check()
            if next_backup is not None and self.problem is None and time.time() >= next_backup:
                next_backup = await self.backup()
            # A failed probe sets it too; a failure after this line wakes the next wait.
            self.ledger.write_failed.clear()
            wait = CHECK_EVERY
            if next_backup is not None:
                wait = max(0.0, min(wait, next_backup - time.time()))
            await wait_any(stop, self.ledger.write_failed, wait)

    async def check(self) -> None:
        """Find out whether the ledger takes writes; report a change once."""
        outdated = await self.ledger.outdated()
        if outdated is not None:
            log.error("ledger.outdated", problem=outdated)
            self.on_fatal(outdated)
            return
        folder = self.ledger.path.parent
        problem: str | None = None
        if not self.ledger.shared and not os.access(folder, os.W_OK | os.X_OK):
            problem = (
                f"the ledger's folder {folder} is not writable "
                "(read-only file system or permissions)"
            )
        elif self.ledger.write_problem is not None and not await self.ledger.probe_write():
            problem = self.ledger.write_problem
        if problem == self.problem:
            return
        if problem is not None:
            log.error(
                "ledger.unwritable",
                problem=problem,
                ledger=self.ledger.where,
                effect="no new job starts until the ledger takes writes; nothing recorded is lost",
            )
        else:
            log.info("ledger.writable", ledger=self.ledger.where)
        self.problem = problem
        self.on_problem(problem)

    async def backup(self) -> float:
        """Make a backup now; returns when the next one is due."""
        try:
            path = await asyncio.to_thread(make_backup, self.ledger.path, self.config.backups)
        except (OSError, LedgerError) as exc:
            log.error("ledger.backup_failed", error=str(exc), retry_in_s=BACKUP_RETRY)
            return time.time() + BACKUP_RETRY
        log.info("ledger.backup", path=str(path), keep=self.config.backups)
        return time.time() + BACKUP_EVERY


async def wait_writable(ledger: JobLedger, stop: asyncio.Event) -> None:
    """Until the ledger takes writes again (the watch's probe says so) or ``stop``."""
    while not stop.is_set() and not ledger.writable.is_set():
        await wait_any(stop, ledger.writable, CHECK_EVERY)
