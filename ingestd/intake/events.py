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

from ingestd.aio import wait_any, wait_event
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
        self._armed: frozenset[str] = frozenset()  # the folders watched
        self._stale = False  # a watched folder went: re-arm after the next scan

    @property
    def watched(self) -> frozenset[str]:
        """The folders watched now (each on its own), empty while no watch runs."""
        return self._armed

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
            # The folders to watch are those the scan read: until it has read some (the
            # daemon starts the events after the start-up scan) there is nothing to watch.
            if not self.scanner.folders:
                self.scanner.folders_read.clear()
                await wait_any(stop, self.scanner.folders_read, None)
                continue
            try:
                self.watcher_alive = True
                await self._watch(stop)
            except Exception:
                log.exception("watcher.failed", retry_in_s=WATCH_RESTART_DELAY)
                self.scanner.rescan_now.set()  # a folder gone meanwhile: the scan knows
            finally:
                self.watcher_alive = False
            await wait_event(stop, WATCH_RESTART_DELAY)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Watch the folders the scan read, each on its own (not recursively: a recursive
        watch walks and stats every file of the tree while holding the GIL, seconds for a
        million files); re-armed when a scan reads a different set. The new watch is
        started before the old one is stopped, so no event falls between them."""
        watchers: list[tuple[asyncio.Task[None], asyncio.Event]] = []
        armed: frozenset[str] | None = None  # the scan's set the watch was made from
        try:
            while not stop.is_set():
                scanned = self.scanner.folders or frozenset()
                if scanned == armed and not self._stale:
                    self.scanner.folders_read.clear()
                    await wait_any(stop, self.scanner.folders_read, None, [t for t, _ in watchers])
                    for task, _quit in watchers:
                        if task.done():
                            task.result()  # it failed: raise, and restart
                            return  # it stopped on its own
                    continue
                # Those still there (the scan may be a moment old); a folder gone
                # in between would fail the whole watch.
                wanted = frozenset(f for f in scanned if os.path.isdir(f))
                if not wanted:
                    return
                new_folders = bool(wanted - self._armed) or self._stale
                first = armed is None
                self._stale = False
                self._armed, armed = wanted, scanned
                quit = asyncio.Event()
                task = asyncio.create_task(self._consume(sorted(wanted), quit))
                await asyncio.sleep(0)  # awatch adds its watches at its first step
                if task.done():
                    task.result()
                old, watchers = watchers, [(task, quit)]
                await _stop(old)
                log.info("watcher.armed", folders=len(wanted))
                if new_folders and not first:
                    # A file put into a new folder between the walk that found the
                    # folder and its watch has no event: the scan finds it.
                    self.scanner.rescan_now.set()
        finally:
            await _stop(watchers)
            self._armed = frozenset()

    async def _consume(self, folders: list[str], quit: asyncio.Event) -> None:
        """One watch of ``folders`` until ``quit``: each event to :meth:`observe_path`."""
        async for changes in watchfiles.awatch(
            *folders,
            stop_event=quit,
            recursive=False,  # one watch a folder: the scan found the subfolders
            force_polling=self.watch.force_polling or None,
            # One folder it may not read must not stop the events of all the
            # others; the scans report it (watcher.unreadable).
            ignore_permission_denied=True,
            watch_filter=None,
            debounce=400,
            step=50,
        ):
            for change, raw in changes:
                if change == watchfiles.Change.deleted and raw in self._armed:
                    # A watched folder went: its watch is gone with it, also if a new
                    # folder takes its path; the scan re-arms the watch.
                    self._stale = True
                    self.scanner.rescan_now.set()
                    continue
                # A full or read-only ledger: the ledger watch reports it, and a
                # rescan finds this file once writes work again.
                with contextlib.suppress(LedgerUnwritable):
                    await self.observe_path(Path(raw))


async def _stop(watchers: list[tuple[asyncio.Task[None], asyncio.Event]]) -> None:
    """Stop these watches (each ends within its ``step``) and wait for them: one that
    failed is being replaced, or the events are stopping."""
    for _task, quit in watchers:
        quit.set()
    for task, _quit in watchers:
        with contextlib.suppress(Exception):
            await task
