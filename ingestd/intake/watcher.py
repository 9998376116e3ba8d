"""Finding files and deciding when each one is finished: the intake's stages, wired.

Folder events (:mod:`ingestd.intake.events`) are only a hint: they get lost
on network shares, on inotify overflow and while the daemon is down. A scan
at start-up and a periodic rescan (:mod:`ingestd.intake.scan`) are the
truth; all three feed the same settle-and-check logic
(:mod:`ingestd.intake.settle`), and a finished file is skipped as a copy or
queued (:mod:`ingestd.intake.ready`). Every candidate becomes a ``waiting``
job at once (:mod:`ingestd.intake.waiting`), so ``ingestd status`` can say
why it waits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from ingestd.config.patterns import PathFilter
from ingestd.config.schema import WatchConfig
from ingestd.disk.judged import OpenRule
from ingestd.intake.events import NO_EVENTS_ENV, Events
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.ready import Ready
from ingestd.intake.scan import Scanner
from ingestd.intake.settle import Settler
from ingestd.intake.waiting import Waiting
from ingestd.ledger.api import JobLedger


class Intake:
    """Scan, events and rescans in; ``queued`` jobs out."""

    def __init__(
        self,
        *,
        watch: WatchConfig,
        sidecars: bool,
        ledger: JobLedger,
        checks: FinishedChecks,
        is_active: Callable[[int], bool],
        on_ready: Callable[[], None],
    ) -> None:
        self.watch = watch
        self.ledger = ledger
        self.filter = PathFilter(self.watch.include, self.watch.exclude)
        self.roots = [Path(os.path.abspath(p)) for p in self.watch.paths]
        self.rule = OpenRule.for_watch(self.roots, self.watch.follow_symlinks)
        self.waiting = Waiting(ledger)
        self.scanner = Scanner(
            watch=self.watch,
            ledger=ledger,
            path_filter=self.filter,
            roots=self.roots,
            is_active=is_active,
            waiting=self.waiting,
        )
        self.events = Events(
            watch=self.watch,
            ledger=ledger,
            path_filter=self.filter,
            roots=self.roots,
            scanner=self.scanner,
        )
        self.ready = Ready(ledger=ledger, rule=self.rule, waiting=self.waiting, on_ready=on_ready)
        self.settler = Settler(
            watch=self.watch,
            sidecars=sidecars,  # record.sidecar: a video waits for its sidecars
            ledger=ledger,
            checks=checks,
            rule=self.rule,
            is_active=is_active,
            waiting=self.waiting,
            ready=self.ready,
        )

    @property
    def watcher_alive(self) -> bool | None:
        """True while the folder events are being watched (health reports a dead watch);
        None when they are switched off on purpose (``INGESTD_NO_WATCH_EVENTS``)."""
        if os.environ.get(NO_EVENTS_ENV):
            return None
        return self.events.watcher_alive

    @property
    def last_scan_at(self) -> float | None:
        return self.scanner.last_scan_at

    async def scan(self, why: str) -> int:
        """Look at every file under every root; returns how many were new or changed."""
        return await self.scanner.scan(why)

    async def observe_path(self, path: Path) -> None:
        """A folder event named ``path``: look at that one file (or rescan for a folder)."""
        await self.events.observe_path(path)

    async def settle(self) -> bool:
        """One pass over the waiting files: queue those that are finished; False if none wait."""
        return await self.settler.settle()

    def tick_interval(self) -> float:
        return self.settler.tick_interval()

    async def run_settle(self, stop: asyncio.Event) -> None:
        await self.settler.run_settle(stop)

    async def run_rescans(self, stop: asyncio.Event) -> None:
        await self.scanner.run_rescans(stop)

    async def run_events(self, stop: asyncio.Event) -> None:
        await self.events.run_events(stop)
