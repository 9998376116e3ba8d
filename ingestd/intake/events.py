"""Folder events (``watchfiles.awatch``): a hint that a file may have appeared or changed.

Events get lost on network shares, on inotify overflow and while the daemon
is down, so they only speed things up: the scans (:mod:`ingestd.intake.scan`)
are the truth. An event about a file looks at that one file; one about a
folder asks for a rescan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import watchfiles

from ingestd.aio import wait_event
from ingestd.config.patterns import PathFilter
from ingestd.config.schema import WatchConfig
from ingestd.disk.judged import snapshot
from ingestd.errors import LedgerUnwritable
from ingestd.intake.scan import Scanner
from ingestd.intake.waiting import as_snap
from ingestd.ledger.api import JobLedger
from ingestd.logs import get_logger

log = get_logger("ingestd.intake.events")

# Tests switch folder events off to prove the rescan alone finds files.
NO_EVENTS_ENV = "INGESTD_NO_WATCH_EVENTS"
WATCH_RESTART_DELAY = 5.0


class Events:
    """Feeds folder events to the scanner, one file at a time; restarts the watch if it fails."""

    def __init__(
        self,
        *,
        watch: WatchConfig,
        ledger: JobLedger,
        path_filter: PathFilter,
        roots: list[Path],
        scanner: Scanner,
    ) -> None:
        self.watch = watch
        self.ledger = ledger
        self.filter = path_filter
        self.roots = roots
        self.scanner = scanner
        self.watcher_alive = False

    async def observe_path(self, path: Path) -> None:
        """A folder event named ``path``: look at that one file (or rescan for a folder)."""
        root = next((r for r in self.roots if path.is_relative_to(r)), None)
        if root is None or path == root:
            return
        if path.is_dir():
            self.scanner.rescan_now.set()
            return
        if not self.filter.wants_path(path.relative_to(root)) or self.scanner.bad_name(path):
            return
        current = await asyncio.to_thread(
            snapshot, path, follow_symlinks=self.watch.follow_symlinks
        )
        if current is None:
            return  # gone, or a symlink not followed: the settle loop notices if it waited
        async with self.scanner.observing:
            known = await self.ledger.known_snapshots_for(str(path))
            await self.scanner.observe(path, root, as_snap(current), known)

    async def run_events(self, stop: asyncio.Event) -> None:
        """Feed folder events to :meth:`observe_path`; restart the watch if it fails."""
        if os.environ.get(NO_EVENTS_ENV):
            log.info("watcher.events_disabled", variable=NO_EVENTS_ENV)
            return
        while not stop.is_set():
            roots = [str(r) for r in self.roots if r.is_dir()]
            if not roots:
                await wait_event(stop, WATCH_RESTART_DELAY)
                continue
            try:
                self.watcher_alive = True
                async for changes in watchfiles.awatch(
                    *roots,
                    stop_event=stop,
                    recursive=self.watch.recursive,
                    force_polling=self.watch.force_polling or None,
                    # One folder it may not read must not stop the events of all the
                    # others; the scans report it (watcher.unreadable).
                    ignore_permission_denied=True,
                    watch_filter=None,
                    debounce=400,
                    step=50,
                ):
                    for _change, raw in changes:
                        # A full or read-only ledger: the ledger watch reports it, and a
                        # rescan finds this file once writes work again.
                        with contextlib.suppress(LedgerUnwritable):
                            await self.observe_path(Path(raw))
            except Exception:
                log.exception("watcher.failed", retry_in_s=WATCH_RESTART_DELAY)
            finally:
                self.watcher_alive = False
            await wait_event(stop, WATCH_RESTART_DELAY)
