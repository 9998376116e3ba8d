"""The start-up scan and the periodic rescans: the truth about which files exist.

Folder events get lost (network shares, inotify overflow, the daemon being
down), so every ``rescan_interval`` each root is walked again and each file
compared with its newest job. A file seen for the first time, or changed
after it was done, becomes a ``waiting`` job at once; the settle loop takes
it from there. A file whose job failed because it had gone (renamed away
mid-upload) takes that job up again once it is back. A new device number
alone (a remount) is no change. A folder event about one file takes the
same path (:meth:`Scanner.observe`), under the same lock.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path

from ingestd.config.patterns import PathFilter
from ingestd.config.schema import WatchConfig
from ingestd.disk.folders import FolderState, folder_state
from ingestd.intake.settled import SettledFiles, folder_of
from ingestd.intake.waiting import SETTLED, Snap, Tracked, Waiting, same_file
from ingestd.intake.walk import iter_folders
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Known, State
from ingestd.logs import get_logger
from ingestd.memory import release_free_memory

log = get_logger("ingestd.intake.scan")

# Jobs read per ledger query while the settled files are loaded (once, at the first scan).
LOAD_PAGE = 10_000


class Scanner:
    """Walks the roots and turns new or changed files into waiting jobs."""

    def __init__(
        self,
        *,
        watch: WatchConfig,
        ledger: JobLedger,
        path_filter: PathFilter,
        roots: list[Path],
        is_active: Callable[[int], bool],
        waiting: Waiting,
    ) -> None:
        self.watch = watch
        self.ledger = ledger
        self.filter = path_filter
        self.roots = roots
        self.is_active = is_active
        self.waiting = waiting
        self.rescan_now = asyncio.Event()
        self.last_scan_at: float | None = None
        # Each root's state at the last scan; a folder not present is not walked.
        self.folder_states = [FolderState.PRESENT for _root in roots]
        # Scans and events both turn paths into jobs; one at a time, or both add the same path.
        self.observing = asyncio.Lock()
        # Names warned about as not UTF-8: those the last scan found, and those found
        # since (the next scan's); so a name is warned about once while it is there,
        # and the sets hold only files that are present (issue 11: nothing grows).
        self._bad_names: set[Path] = set()
        self._bad_names_seen: set[Path] = set()
        # Rescans compare each file with its newest job without reading the whole ledger
        # each time: done and skipped jobs, which no longer change, are kept in
        # intake/settled.py (loaded once, 8 bytes a file), and only the live jobs are read
        # per scan, with those that were live before (or were added since) and may have
        # settled meanwhile. A file the cache does not know is looked up in the ledger by
        # its path before it counts as new; the cache drops (lazily) what a clean scan no
        # longer finds: moved or deleted files.
        self._settled: SettledFiles | None = None
        self._maybe_settled: set[int] = set()
        # The folders each root's last walk read (a string a folder, not a file): the
        # folder events watch these one by one (intake/events.py), as a recursive watch
        # would walk and stat every file again, holding the GIL.
        self._read: list[frozenset[str]] = [frozenset() for _root in roots]
        self.folders: frozenset[str] | None = None  # all roots'; None until a walk
        self.folders_read = asyncio.Event()  # set after each root's walk

    def _publish(self, index: int, read: frozenset[str]) -> None:
        """Root ``index``'s walk read these folders (none if it was not there)."""
        self._read[index] = read
        self.folders = frozenset().union(*self._read)
        self.folders_read.set()

    @property
    def settled(self) -> SettledFiles | None:
        """The cache of settled files (None until the first scan loads it)."""
        return self._settled

    # --- finding ------------------------------------------------------------------------

    def _walk(
        self, root: Path, settled: SettledFiles, live: dict[str, Known], read: set[str]
    ) -> tuple[int, list[tuple[str, Snap]], bool]:
        """Stat every wanted file under ``root``; returns how many there are, those that
        are not a settled (done or skipped) job's unchanged file (the scan looks at these),
        and whether every folder could be read; ``read`` gets the folders read. Runs in a
        thread; a folder whose digest agrees (intake/settled.py) costs its ``stat()`` calls
        and a hash a file."""
        follow = self.watch.follow_symlinks
        errors: list[Path] = []

        def look(entry: os.DirEntry[str], path: str) -> os.stat_result | None:
            """One file as snapshot() sees it, or None to leave it out (and say why)."""
            if not path.isascii() and self.bad_name(Path(path)):
                return None
            try:
                # A symlink is only followed with follow_symlinks.
                info = entry.stat(follow_symlinks=follow)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as err:
                errors.append(Path(path))
                _log_scan_error(Path(path), err)
                return None
            return info if stat.S_ISREG(info.st_mode) else None

        def on_error(path: Path, err: OSError) -> None:
            errors.append(path)
            _log_scan_error(path, err)

        live_folders = {folder_of(path) for path in live}
        files = 0
        candidates: list[tuple[str, Snap]] = []
        for folder, entries in iter_folders(
            root,
            self.filter,
            recursive=self.watch.recursive,
            follow_symlinks=follow,
            on_error=on_error,
            read=read,
        ):
            live_here = live if folder in live_folders else None
            files += settled.walk(folder, entries, follow, live_here, look, candidates)
        return files, candidates, not errors

    def bad_name(self, path: Path) -> bool:
        """True for a name that is not UTF-8 (a Latin-1 share, say): the ledger, the record name
        and the log all need text, so the file is left alone, with one warning per path."""
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            warned = path in self._bad_names or path in self._bad_names_seen
            self._bad_names_seen.add(path)
            if not warned:
                log.warning(
                    "file.bad_name",
                    path=os.fsencode(path).decode("utf-8", "backslashreplace"),
                    detail="the file name is not valid UTF-8: rename the file to upload it",
                )
            return True
        return False

    async def scan(self, why: str) -> int:
        """Look at every file under every root; returns how many were new or changed."""
        started = time.monotonic()
        files = changed = 0
        clean = True
        settled = await self._load()
        settled.begin_scan()
        for index, root in enumerate(self.roots):
            if not await self._folder_present(index, root):
                clean = False  # what it held is not gone: keep it all until it is back
                self._publish(index, frozenset())
                continue
            live = await self._known()
            settled.walk_begins()
            read: set[str] = set()
            try:
                found, candidates, readable = await asyncio.to_thread(
                    self._walk, root, settled, live, read
                )
            finally:
                settled.walk_ends()
            self._publish(index, frozenset(read))
            files += found
            clean = clean and readable
            async with self.observing:
                walked_live = live
                live = await self._known()  # again: jobs moved on during the walk
                changed += await self._judge(root, candidates, live, walked_live, settled)
        self._bad_names, self._bad_names_seen = self._bad_names_seen, set()
        settled.end_scan(clean)
        self.last_scan_at = time.time()
        release_free_memory()  # what the walk and its jobs used is free again: give it back
        log.info(
            "watcher.rescan",
            why=why,
            files=files,
            new_or_changed=changed,
            seconds=round(time.monotonic() - started, 3),
        )
        return changed

    async def _judge(
        self,
        root: Path,
        candidates: list[tuple[str, Snap]],
        live: dict[str, Known],
        walked_live: dict[str, Known],
        settled: SettledFiles,
    ) -> int:
        """The files the walk did not find settled: each against its path's newest job (the
        live ones are at hand, the others are asked of the ledger in one query).
        ``walked_live``: the live jobs as the walk saw them (those that settled since were
        added to the cache by :meth:`_known`)."""
        unknown = [path for path, _snap in candidates if path not in live]
        newest = await self.ledger.snapshots_for_paths(unknown) if unknown else {}
        missing = await self._missing(live)
        changed = 0
        new: list[tuple[str, Snap]] = []
        for path, snap in candidates:
            known = live.get(path) or newest.get(path)
            if known is None:
                new.append((path, snap))
            elif known[2] in SETTLED:
                if same_file(known[1], snap):
                    if path not in walked_live:  # one the cache had no word on: now it has
                        settled.add(path, snap)
                else:
                    settled.discard(path, known[1])  # changed after done: a new job
                    new.append((path, snap))
            else:
                changed += await self.observe(Path(path), root, snap, known, missing)
        return changed + await self._add_new(root, new)

    async def _folder_present(self, index: int, root: Path) -> bool:
        """Look at watch folder ``index``; log when its state changes (once, not per scan)."""
        state = await asyncio.to_thread(folder_state, root, require_mount=self.watch.require_mount)
        before = self.folder_states[index]
        self.folder_states[index] = state
        if state != before:
            event = log.info if state == FolderState.PRESENT else log.warning
            event(
                "watcher.folder_state",
                folder=self.watch.label(index),
                path=str(root),
                state=state.value,
                was=before.value,
            )
        return state == FolderState.PRESENT

    async def _load(self) -> SettledFiles:
        """The cache of settled files, loaded from the ledger a page at a time at the first
        scan (under the lock: no event makes a job meanwhile, whose discard it could miss)."""
        if self._settled is not None:
            return self._settled
        async with self.observing:
            settled = SettledFiles()
            after = 0
            while rows := await self.ledger.newest_identities(after, LOAD_PAGE):
                settled.load(rows)
                after = rows[-1][0]
            settled.loaded()
            self._settled = settled
        return settled

    async def _missing(self, live: dict[str, Known]) -> set[int]:
        """The live jobs failed as ``source_missing`` (one query, and only when any job
        failed): those whose file a scan finds again are taken up again."""
        if not any(known[2] == State.FAILED for known in live.values()):
            return set()
        return await self.ledger.missing_sources()

    async def _known(self) -> dict[str, Known]:
        """The live jobs (not done or skipped) by path; those that settled since the last
        look join the cache of settled files."""
        settled = await self._load()
        live = await self.ledger.live_snapshots()
        moved_on = self._maybe_settled - {known[0] for known in live.values()}
        if moved_on:
            found = await self.ledger.snapshots_of(moved_on)  # the newest of each path
            # Settled ones join the cache (unless a newer job has the path now); gone ones
            # (forgotten) are dropped; the rest (added since the query above) are kept for
            # the next look.
            self._maybe_settled -= moved_on - {known[0] for known in found.values()}
            for path, known in found.items():
                if known[2] not in SETTLED:
                    continue
                self._maybe_settled.discard(known[0])
                if path not in live:
                    settled.add(path, known[1])
        self._maybe_settled |= {known[0] for known in live.values()}
        return live

    async def _add_new(self, root: Path, new: list[tuple[str, Snap]]) -> int:
        """Jobs for files seen for the first time (or changed after done): one commit."""
        added = await self.ledger.add_jobs(root=str(root), files=new)
        now = time.monotonic()
        for path, snap in new:
            job_id = added[path]
            self._maybe_settled.add(job_id)
            self.waiting.tracking[job_id] = Tracked(snap, now, now)
            log.debug("file.discovered", job_id=job_id, path=path, size=snap[0])
        if new:
            self.waiting.settle_now.set()
        return len(new)

    async def observe(
        self,
        path: Path,
        root: Path,
        snap: Snap,
        known: tuple[int, Snap, State] | None,
        missing: Collection[int] | None = None,
    ) -> int:
        """Compare one file with its newest job (``known``): a new job if it is new or
        changed after done, back to waiting if it changed before, or if its job failed
        because the file had gone (``missing``: those jobs' ids, asked of the ledger when
        None); 1 if any of these happened. The caller holds :attr:`observing`."""
        if known is None or (known[2] in SETTLED and not same_file(known[1], snap)):
            if known is not None and self._settled is not None:
                self._settled.discard(str(path), known[1])  # the new job takes the path
            job = await self.ledger.add_job(path=str(path), root=str(root), snapshot=snap)
            now = time.monotonic()
            self._maybe_settled.add(job.id)
            self.waiting.tracking[job.id] = Tracked(snap, now, now)
            self.waiting.settle_now.set()
            log.debug("file.discovered", job_id=job.id, path=str(path), size=snap[0])
            return 1
        job_id, known_snap, state = known
        if state in SETTLED or self.is_active(job_id):
            return 0  # already uploaded, or a worker owns it and checks the file itself
        if state == State.WAITING:
            if job_id not in self.waiting.tracking:
                now = time.monotonic()
                self.waiting.tracking[job_id] = Tracked(snap, now, now)
                self.waiting.settle_now.set()
            return 0
        if state == State.FAILED:
            if missing is None:
                missing = await self.ledger.missing_sources()
            if job_id in missing:
                return await self._take_up(job_id, path, snap)
        if same_file(known_snap, snap):
            return 0
        job = await self.ledger.get_job(job_id)
        await self.ledger.source_changed(job, snap, "file changed")
        now = time.monotonic()
        self.waiting.tracking[job_id] = Tracked(snap, now, now)
        self.waiting.settle_now.set()
        log.info("file.changed", job_id=job_id, path=str(path), was=state.value, size=snap[0])
        return 1

    async def _take_up(self, job_id: int, path: Path, snap: Snap) -> int:
        """The file of a job failed ``source_missing`` is back (renamed away mid-upload and
        back, a share that came back): the same job uploads it."""
        if not await self.ledger.source_returned(job_id, snap):
            return 0
        now = time.monotonic()
        self.waiting.tracking[job_id] = Tracked(snap, now, now)
        self.waiting.settle_now.set()
        log.info("file.returned", job_id=job_id, path=str(path), size=snap[0])
        return 1

    # --- rescans --------------------------------------------------------------------------------

    async def run_rescans(self, stop: asyncio.Event) -> None:
        """Rescan every ``rescan_interval``, or soon after a folder event."""
        while not stop.is_set():
            waiter = asyncio.ensure_future(self.rescan_now.wait())
            try:
                await asyncio.wait(
                    [waiter, asyncio.ensure_future(stop.wait())],
                    timeout=self.watch.rescan_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
            if stop.is_set():
                return
            why = "folder_event" if self.rescan_now.is_set() else "interval"
            self.rescan_now.clear()
            await self.scan(why)


def _log_scan_error(path: Path, err: OSError) -> None:
    log.warning("watcher.unreadable", path=str(path), error=err.strerror or str(err))
