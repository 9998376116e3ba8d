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
from ingestd.intake.waiting import SETTLED, Snap, Tracked, Waiting, same_file
from ingestd.intake.walk import iter_file_entries
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Known, State
from ingestd.logs import get_logger
from ingestd.memory import release_free_memory

log = get_logger("ingestd.intake.scan")


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
        # each time: done and skipped jobs, which no longer change, are kept here (loaded
        # once), and only the live ones are read per scan, with those that were live
        # before (or were added since) and may have settled meanwhile. A clean scan drops
        # the paths it did not find (moved or deleted files); paths missing from here
        # are then looked up in the ledger before they count as new (_recall_settled).
        self._settled: dict[str, Known] | None = None
        self._pruned = False
        self._maybe_settled: set[int] = set()

    # --- finding ------------------------------------------------------------------------

    def _walk(
        self, root: Path, settled: dict[str, Known], live: dict[str, Known], found: set[str]
    ) -> tuple[int, list[tuple[str, Snap]], bool]:
        """Stat every wanted file under ``root``; returns how many there are, those that
        are not a settled (done or skipped) job's unchanged file (the scan looks at these),
        and whether every folder could be read. Every path found is added to ``found``."""
        files = 0
        candidates: list[tuple[str, Snap]] = []
        errors: list[Path] = []

        def on_error(path: Path, err: OSError) -> None:
            errors.append(path)
            _log_scan_error(path, err)

        for entry in iter_file_entries(
            root,
            self.filter,
            recursive=self.watch.recursive,
            follow_symlinks=self.watch.follow_symlinks,
            on_error=on_error,
        ):
            path = entry.path
            if not path.isascii() and self.bad_name(Path(path)):
                continue
            try:
                # As snapshot() looks: a symlink is only followed with follow_symlinks.
                info = entry.stat(follow_symlinks=self.watch.follow_symlinks)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as err:
                on_error(Path(path), err)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            files += 1
            found.add(path)
            snap = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
            if path not in live:
                known = settled.get(path)
                if known is not None and same_file(known[1], snap):
                    continue
            candidates.append((path, snap))
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
        present: set[str] = set()
        clean = True
        for index, root in enumerate(self.roots):
            if not await self._folder_present(index, root):
                clean = False  # what it held is not gone: keep it all until it is back
                continue
            settled, live = await self._known()
            found, candidates, readable = await asyncio.to_thread(
                self._walk, root, settled, live, present
            )
            files += found
            clean = clean and readable
            async with self.observing:
                settled, live = await self._known()  # again: jobs moved on during the walk
                if self._pruned:
                    await self._recall_settled(
                        [path for path, _snap in candidates if path not in live]
                    )
                missing = await self._missing(live)
                new: list[tuple[str, Snap]] = []
                for path, snap in candidates:
                    known = live.get(path) or settled.get(path)
                    if known is None or (known[2] in SETTLED and not same_file(known[1], snap)):
                        new.append((path, snap))
                    else:
                        changed += await self.observe(Path(path), root, snap, known, missing)
                changed += await self._add_new(root, new)
        self._bad_names, self._bad_names_seen = self._bad_names_seen, set()
        if clean:
            self._forget_absent(present)
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

    def _forget_absent(self, present: set[str]) -> None:
        """Drop the settled jobs whose files a clean scan did not find (moved away or
        deleted): the cache holds what is on disk, not every path ever seen."""
        if self._settled is None:
            return
        gone = [path for path in self._settled if path not in present]
        for path in gone:
            del self._settled[path]
        self._pruned = self._pruned or bool(gone)

    async def _recall_settled(self, paths: list[str]) -> None:
        """After a prune, the paths the cache does not hold may still have a settled job (a
        file moved away and back, a folder readable again): one ledger query for all of
        them, and those that do go back into the cache."""
        assert self._settled is not None
        missing = [path for path in paths if path not in self._settled]
        if not missing:
            return
        for path, known in (await self.ledger.snapshots_for_paths(missing)).items():
            if known[2] in SETTLED:
                self._settled[path] = known

    async def _missing(self, live: dict[str, Known]) -> set[int]:
        """The live jobs failed as ``source_missing`` (one query, and only when any job
        failed): those whose file a scan finds again are taken up again."""
        if not any(known[2] == State.FAILED for known in live.values()):
            return set()
        return await self.ledger.missing_sources()

    async def _known(self) -> tuple[dict[str, Known], dict[str, Known]]:
        """The newest job of every path, as (settled: done or skipped, live: the others)."""
        if self._settled is None:
            everything = await self.ledger.known_snapshots()
            self._settled = {p: k for p, k in everything.items() if k[2] in SETTLED}
            live = {p: k for p, k in everything.items() if k[2] not in SETTLED}
        else:
            live = await self.ledger.live_snapshots()
            moved_on = self._maybe_settled - {known[0] for known in live.values()}
            if moved_on:
                found = await self.ledger.snapshots_of(moved_on)
                # Settled ones join the cache; gone ones (forgotten) are dropped; the rest
                # (added since the query above) are kept for the next look.
                self._maybe_settled -= moved_on - {known[0] for known in found.values()}
                for path, known in found.items():
                    if known[2] not in SETTLED:
                        continue
                    self._maybe_settled.discard(known[0])
                    held = self._settled.get(path)
                    if held is None or held[0] < known[0]:
                        self._settled[path] = known
        self._maybe_settled |= {known[0] for known in live.values()}
        return self._settled, live

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
