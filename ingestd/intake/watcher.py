"""Finding files and deciding when each one is finished.

Folder events (``watchfiles.awatch``) are only a hint: they get lost on
network shares, on inotify overflow and while the daemon is down. A scan at
start-up and a periodic rescan are the truth; all three feed the same
settle-and-check logic. Every candidate becomes a ``waiting`` job at once, so
``ingestd status`` can say why it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

from ingestd.aio import wait_any, wait_event
from ingestd.config.patterns import PathFilter, iter_file_entries
from ingestd.config.schema import WatchConfig
from ingestd.disk.judged import FileSnapshot, OpenRule, snapshot
from ingestd.errors import FileRefused, LedgerUnwritable
from ingestd.intake.finished import FinishedChecks, WritersVerdict
from ingestd.intake.identity import fingerprint, full_sha256
from ingestd.intake.sidecar import sidecar_wait_reason
from ingestd.ledger.store import Job, Known, Ledger, State
from ingestd.logs import get_logger
from ingestd.memory import release_free_memory

log = get_logger("ingestd.intake.watcher")

Snap = tuple[int, int, int, int]
# Tests switch folder events off to prove the rescan alone finds files.
NO_EVENTS_ENV = "INGESTD_NO_WATCH_EVENTS"
# A path whose newest job is in one of these states needs nothing while its file is unchanged.
SETTLED = (State.DONE, State.SKIPPED)
# With no file waiting, the settle loop looks this often (scans and events wake it at once).
IDLE_SETTLE_POLL = 2.0
# Files a settle pass queues per transaction (workers start on the first ones meanwhile).
QUEUE_BATCH = 256
STILL_CHANGING_AFTER = 60.0
STILL_CHANGING_EVERY = 300.0
WATCH_RESTART_DELAY = 5.0


def as_snap(s: FileSnapshot) -> Snap:
    return (s.size, s.mtime_ns, s.inode, s.device)


@dataclass
class _Tracked:
    """A waiting file: the version last seen and since when it has not changed."""

    snap: Snap
    since: float
    first_seen: float
    reason: str | None = None
    changing_logged: float = 0.0


@dataclass
class _Verdict:
    """What the finished checks said of one settled file (see Intake._judge_all)."""

    reason: str | None = None
    check_error: OSError | FileRefused | None = None
    fingerprint: str | None = None
    read_error: OSError | FileRefused | None = None
    internal_error: Exception | None = None


@dataclass
class _Pending:
    """Finished files a settle pass queues together, and their fingerprints."""

    jobs: list[tuple[int, Path, _Tracked, float, str]] = field(default_factory=list)
    prints: dict[str, int] = field(default_factory=dict)

    def add(self, job_id: int, path: Path, tracked: _Tracked, now: float, print_: str) -> None:
        self.jobs.append((job_id, path, tracked, now, print_))
        self.prints.setdefault(print_, job_id)


def _look_all(paths: list[str], follow_symlinks: bool) -> list[FileSnapshot | OSError | None]:
    """:func:`snapshot` of each path (its OSError in its place), in one worker thread."""
    looks: list[FileSnapshot | OSError | None] = []
    for path in paths:
        try:
            looks.append(snapshot(Path(path), follow_symlinks=follow_symlinks))
        except OSError as err:
            looks.append(err)
    return looks


def _problem(err: BaseException) -> str:
    """An OSError's words, or a refusal's (judged.py): never a sidecar's content."""
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err)


class Intake:
    """Scan, events and rescans in; ``queued`` jobs out."""

    def __init__(
        self,
        *,
        watch: WatchConfig,
        sidecars: bool,
        ledger: Ledger,
        checks: FinishedChecks,
        is_active: Callable[[int], bool],
        on_ready: Callable[[], None],
    ) -> None:
        self.watch = watch
        self.sidecars = sidecars  # record.sidecar: a video waits for its sidecars to settle
        self.ledger = ledger
        self.checks = checks
        self.is_active = is_active
        self.on_ready = on_ready
        self.filter = PathFilter(self.watch.include, self.watch.exclude)
        self.roots = [Path(os.path.abspath(p)) for p in self.watch.paths]
        self.rule = OpenRule.for_watch(self.roots, self.watch.follow_symlinks)
        self.tracking: dict[int, _Tracked] = {}
        self.rescan_now = asyncio.Event()
        self.settle_now = asyncio.Event()  # a file started waiting: settle without delay
        self.watcher_alive = False
        self.last_scan_at: float | None = None
        # Scans and events both turn paths into jobs; one at a time, or both add the same path.
        self._observing = asyncio.Lock()
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
            if not path.isascii() and self._bad_name(Path(path)):
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
                if known is not None and known[1] == snap:
                    continue
            candidates.append((path, snap))
        return files, candidates, not errors

    def _bad_name(self, path: Path) -> bool:
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
        for root in self.roots:
            settled, live = await self._known()
            found, candidates, readable = await asyncio.to_thread(
                self._walk, root, settled, live, present
            )
            files += found
            clean = clean and readable
            async with self._observing:
                settled, live = await self._known()  # again: jobs moved on during the walk
                if self._pruned:
                    await self._recall_settled(
                        [path for path, _snap in candidates if path not in live]
                    )
                new: list[tuple[str, Snap]] = []
                for path, snap in candidates:
                    known = live.get(path) or settled.get(path)
                    if known is None or (known[2] in SETTLED and known[1] != snap):
                        new.append((path, snap))
                    else:
                        changed += await self._observe(Path(path), root, snap, known)
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
        added = await self.ledger.add_jobs(root=str(root), files=new, state=State.WAITING)
        now = time.monotonic()
        for path, snap in new:
            job_id = added[path]
            self._maybe_settled.add(job_id)
            self.tracking[job_id] = _Tracked(snap, now, now)
            log.info("file.discovered", job_id=job_id, path=path, size=snap[0])
        if new:
            self.settle_now.set()
        return len(new)

    async def observe_path(self, path: Path) -> None:
        """A folder event named ``path``: look at that one file (or rescan for a folder)."""
        root = next((r for r in self.roots if path.is_relative_to(r)), None)
        if root is None or path == root:
            return
        if path.is_dir():
            self.rescan_now.set()
            return
        if not self.filter.wants_path(path.relative_to(root)) or self._bad_name(path):
            return
        current = await asyncio.to_thread(
            snapshot, path, follow_symlinks=self.watch.follow_symlinks
        )
        if current is None:
            return  # gone, or a symlink not followed: the settle loop notices if it waited
        async with self._observing:
            known = await self.ledger.known_snapshots_for(str(path))
            await self._observe(path, root, as_snap(current), known)

    async def _observe(
        self, path: Path, root: Path, snap: Snap, known: tuple[int, Snap, State] | None
    ) -> int:
        if known is None or (known[2] in SETTLED and known[1] != snap):
            job = await self.ledger.add_job(
                path=str(path), root=str(root), snapshot=snap, state=State.WAITING
            )
            now = time.monotonic()
            self._maybe_settled.add(job.id)
            self.tracking[job.id] = _Tracked(snap, now, now)
            self.settle_now.set()
            log.info("file.discovered", job_id=job.id, path=str(path), size=snap[0])
            return 1
        job_id, known_snap, state = known
        if state in SETTLED or self.is_active(job_id):
            return 0  # already uploaded, or a worker owns it and checks the file itself
        if state == State.WAITING:
            if job_id not in self.tracking:
                now = time.monotonic()
                self.tracking[job_id] = _Tracked(snap, now, now)
                self.settle_now.set()
            return 0
        if known_snap == snap:
            return 0
        job = await self.ledger.get_job(job_id)
        await self.ledger.reset_to_waiting(job, snap, "file changed")
        now = time.monotonic()
        self.tracking[job_id] = _Tracked(snap, now, now)
        self.settle_now.set()
        log.info("file.changed", job_id=job_id, path=str(path), was=state.value, size=snap[0])
        return 1

    # --- settling ---------------------------------------------------------------------------

    def tick_interval(self) -> float:
        return max(0.2, min(1.0, self.watch.settle / 5))

    async def settle(self) -> bool:
        """One pass over the waiting files: queue those that are finished; False if none wait.

        A pass costs a few thread hops, not a few per file: all its stats in one,
        the finished checks and fingerprints of the files that settled in another
        (with one look at ``/proc`` for each batch of them), and the files found
        finished are queued a batch a transaction. A drop of thousands of files at
        once then costs milliseconds a file.
        """
        waiting = await self.ledger.waiting()
        present = {job.id for job in waiting}
        for job_id in list(self.tracking):
            if job_id not in present:
                del self.tracking[job_id]
        jobs = [job for job in waiting if not self.is_active(job.id)]
        if not jobs:
            return bool(waiting)
        looks = await asyncio.to_thread(
            _look_all, [job.path for job in jobs], self.watch.follow_symlinks
        )
        due: list[tuple[int, Path, _Tracked]] = []
        for job, look in zip(jobs, looks, strict=True):
            path = Path(job.path)
            try:
                if isinstance(look, OSError):
                    raise look
                tracked = await self._settle_one(job.id, path, job.force, look)
            except (OSError, FileRefused) as err:
                # One file's trouble (a folder it cannot search, a name too long for
                # its marker) must not stop the loop, nor hold up the other files.
                await self._cannot_check(job.id, path, job.snapshot, err)
                continue
            except LedgerUnwritable:
                raise  # not this file's trouble: the ledger watch reports it
            except Exception as err:  # a bug about one file: that file waits, the rest go on
                await self._judging_failed(job.id, path, job.snapshot, err)
                continue
            if tracked is not None:
                due.append((job.id, path, tracked))
        if due:
            await self._finish(due)
        return True

    async def _cannot_check(
        self, job_id: int, path: Path, snap: Snap, err: OSError | FileRefused
    ) -> None:
        now = time.monotonic()
        tracked = self.tracking.setdefault(job_id, _Tracked(snap, now, now))
        await self._wait(job_id, path, tracked, f"cannot check the file ({_problem(err)})")

    async def _judging_failed(self, job_id: int, path: Path, snap: Snap, err: Exception) -> None:
        """An unexpected error judging one file (design.md: one file's trouble is that
        file's outcome): it waits with the error's type as its reason, logged once."""
        now = time.monotonic()
        tracked = self.tracking.setdefault(job_id, _Tracked(snap, now, now))
        reason = f"cannot check the file (internal error: {type(err).__name__}; see the log)"
        if reason != tracked.reason:
            log.error(
                "file.check_failed",
                job_id=job_id,
                path=str(path),
                error=type(err).__name__,
                exc_info=err,
            )
        await self._wait(job_id, path, tracked, reason)

    async def _settle_one(
        self, job_id: int, path: Path, force: bool, current: FileSnapshot | None
    ) -> _Tracked | None:
        """Track one waiting file's latest look; returns its entry when it has settled
        and is due for the finished checks (:meth:`_finish`), else None."""
        now = time.monotonic()
        if current is None:
            await self.ledger.forget(job_id)
            self.tracking.pop(job_id, None)
            log.info("file.vanished", job_id=job_id, path=str(path))
            return None
        snap = as_snap(current)
        tracked = self.tracking.setdefault(job_id, _Tracked(snap, now, now))
        if snap != tracked.snap:
            tracked.snap, tracked.since = snap, now
            self._log_still_changing(job_id, path, tracked, now)
            await self._wait(job_id, path, tracked, "still being written", log_it=False)
        if force:
            pending = _Pending()
            await self._identify(job_id, path, tracked, now, force=True, pending=pending)
            await self._queue_all(pending)
            return None
        if now - tracked.since < self.watch.settle:
            return None
        return tracked

    async def _finish(self, due: list[tuple[int, Path, _Tracked]]) -> None:
        """The finished checks (and fingerprints) of the files that settled, a thread hop
        and a transaction per QUEUE_BATCH files: of thousands that settled together, the
        first are uploading while the rest are still being checked."""
        for first in range(0, len(due), QUEUE_BATCH):
            await self._finish_batch(due[first : first + QUEUE_BATCH])

    async def _finish_batch(self, due: list[tuple[int, Path, _Tracked]]) -> None:
        now = time.monotonic()
        files = [(path, tracked.snap) for _job_id, path, tracked in due]
        verdicts = await asyncio.to_thread(self._judge_all, files, time.time())
        # Earlier jobs of the same content, for the whole batch in one query.
        twins = await self.ledger.twins_of(
            {
                job_id: verdict.fingerprint
                for (job_id, _path, _tracked), verdict in zip(due, verdicts, strict=True)
                if verdict.fingerprint is not None and verdict.reason is None
            }
        )
        pending = _Pending()
        for (job_id, path, tracked), verdict in zip(due, verdicts, strict=True):
            if verdict.internal_error is not None:
                await self._judging_failed(job_id, path, tracked.snap, verdict.internal_error)
            elif verdict.check_error is not None:
                await self._cannot_check(job_id, path, tracked.snap, verdict.check_error)
            elif verdict.reason is not None:
                await self._wait(job_id, path, tracked, verdict.reason)
            else:
                await self._identify(
                    job_id,
                    path,
                    tracked,
                    now,
                    force=False,
                    pending=pending,
                    verdict=verdict,
                    twins=twins,
                )
        await self._queue_all(pending)

    def _judge_all(self, files: list[tuple[Path, Snap]], wall: float) -> list[_Verdict]:
        """In a worker thread: why each settled file must still wait, else its fingerprint.

        ``wall`` is ``time.time()``: a sidecar settles by its mtime. Whatever one
        file's judging raises is that file's verdict, never the batch's.
        """
        try:
            writers = self.checks.writers_of([path for path, snap in files if snap[0] > 0])
        except OSError:
            writers = None  # /proc unreadable: each file's check then looks for itself
        verdicts = []
        for path, snap in files:
            verdict = _Verdict()
            try:
                self._judge_one(path, snap, wall, writers, verdict)
            except Exception as err:
                verdict.internal_error = err
            verdicts.append(verdict)
        return verdicts

    def _judge_one(
        self,
        path: Path,
        snap: Snap,
        wall: float,
        writers: dict[Path, WritersVerdict | OSError] | None,
        verdict: _Verdict,
    ) -> None:
        try:
            verdict.reason = "empty file (0 bytes)" if snap[0] == 0 else None
            if verdict.reason is None:
                verdict.reason = self.checks.why_not_finished(
                    path, snap[0], writers=writers, judged=snap
                )
            if verdict.reason is None and self.sidecars:
                # A sidecar must settle too; wall time, as it is compared with its mtime.
                verdict.reason = sidecar_wait_reason(path, self.watch.settle, wall, self.rule)
        except (OSError, FileRefused) as err:
            verdict.check_error = err
        if verdict.reason is None and verdict.check_error is None:
            try:
                verdict.fingerprint = fingerprint(path, snap, self.rule)
            except (OSError, FileRefused) as err:
                verdict.read_error = err

    async def _wait(
        self, job_id: int, path: Path, tracked: _Tracked, reason: str, *, log_it: bool = True
    ) -> None:
        """Record why the file waits (``ingestd status`` shows it), once per reason."""
        if reason == tracked.reason:
            return
        tracked.reason = reason
        await self.ledger.update(job_id, wait_reason=reason)
        if log_it:
            log.info("file.waiting", job_id=job_id, path=str(path), reason=reason)

    async def _identify(
        self,
        job_id: int,
        path: Path,
        tracked: _Tracked,
        now: float,
        *,
        force: bool,
        pending: _Pending,
        verdict: _Verdict | None = None,
        twins: Mapping[int, Job | None] | None = None,
    ) -> None:
        """A finished file: skip it if its content is already on the server, else add it
        to ``pending`` (queued by :meth:`_queue_all`). ``verdict``: the fingerprint (or
        the error reading it) :meth:`_judge_all` already took; ``twins``: the earlier
        jobs of the same content, looked up for a batch (:meth:`Ledger.twins_of`)."""
        try:
            if verdict is not None and verdict.read_error is not None:
                raise verdict.read_error
            if verdict is not None and verdict.fingerprint is not None:
                print_ = verdict.fingerprint
            else:
                print_ = await asyncio.to_thread(fingerprint, path, tracked.snap, self.rule)
            earlier = None if force else pending.prints.get(print_)
            if earlier is not None:
                # Same content as a file this pass queues: that one is "in progress".
                await self._wait(
                    job_id, path, tracked, f"same content as job {earlier}, in progress"
                )
                return
            if force:
                twin = None
            elif twins is not None and job_id in twins:
                twin = twins[job_id]
            else:
                twin = await self.ledger.twin_of(print_, job_id)
            same = twin is not None and twin.state == State.DONE and bool(twin.sha256)
            if twin is not None and same:
                same = (
                    await asyncio.to_thread(full_sha256, path, tracked.snap, self.rule)
                    == twin.sha256
                )
        except (OSError, FileRefused) as exc:
            await self._wait(job_id, path, tracked, f"cannot read the file ({_problem(exc)})")
            return
        if twin is not None and same:
            size, mtime_ns, inode, device = tracked.snap
            await self.ledger.update(
                job_id,
                state=State.SKIPPED,
                # The version judged, or the next scan takes it for a changed file: a new job.
                size=size,
                mtime_ns=mtime_ns,
                inode=inode,
                device=device,
                fingerprint=print_,
                sha256=twin.sha256,
                wait_reason=f"same content as {twin.path}",
            )
            self.tracking.pop(job_id, None)
            log.info(
                "file.duplicate",
                job_id=job_id,
                path=str(path),
                earlier_job=twin.id,
                earlier_path=twin.path,
                record_id=twin.record_id,
            )
        elif twin is not None and twin.state != State.DONE:
            await self._wait(job_id, path, tracked, f"same content as job {twin.id}, in progress")
        else:
            pending.add(job_id, path, tracked, now, print_)

    def _log_still_changing(self, job_id: int, path: Path, tracked: _Tracked, now: float) -> None:
        if (
            now - tracked.first_seen >= STILL_CHANGING_AFTER
            and now - tracked.changing_logged >= STILL_CHANGING_EVERY
        ):
            tracked.changing_logged = now
            log.info(
                "file.still_changing",
                job_id=job_id,
                path=str(path),
                size=tracked.snap[0],
                changing_for_s=round(now - tracked.first_seen),
            )

    async def _queue_all(self, pending: _Pending) -> None:
        """Queue the finished files of ``pending``: one transaction, then wake the workers."""
        if not pending.jobs:
            return
        changes = []
        for job_id, _path, tracked, _now, print_ in pending.jobs:
            size, mtime_ns, inode, device = tracked.snap
            changes.append(
                (
                    job_id,
                    {
                        "state": State.QUEUED,
                        "fingerprint": print_,
                        "size": size,
                        "mtime_ns": mtime_ns,
                        "inode": inode,
                        "device": device,
                        "wait_reason": None,
                        "next_attempt_at": 0,
                    },
                )
            )
        await self.ledger.update_many(changes)
        for job_id, path, tracked, now, _print in pending.jobs:
            self.tracking.pop(job_id, None)
            log.info(
                "file.ready",
                job_id=job_id,
                path=str(path),
                size=tracked.snap[0],
                waited_s=round(now - tracked.first_seen, 1),
            )
        pending.jobs.clear()  # the fingerprints stay: later files of the pass still see them
        self.on_ready()

    async def run_settle(self, stop: asyncio.Event) -> None:
        """Settle passes every tick while files wait; with none, look every IDLE_SETTLE_POLL
        (another process may set one waiting: ``ingestd retry --force``), or at once when
        a scan or an event finds one."""
        while not stop.is_set():
            self.settle_now.clear()
            busy = await self.settle()
            await wait_any(
                stop, self.settle_now, self.tick_interval() if busy else IDLE_SETTLE_POLL
            )

    # --- events and rescans ---------------------------------------------------------------------

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


def _log_scan_error(path: Path, err: OSError) -> None:
    log.warning("watcher.unreadable", path=str(path), error=err.strerror or str(err))
