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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from ingestd.aio import wait_event
from ingestd.config import Config
from ingestd.errors import LedgerUnwritable
from ingestd.fingerprint import fingerprint, full_sha256
from ingestd.finished import FileSnapshot, FinishedChecks, snapshot
from ingestd.ledger import Ledger, State
from ingestd.logs import get_logger
from ingestd.matching import PathFilter, iter_files
from ingestd.sidecar import sidecar_wait_reason

log = get_logger("ingestd.watcher")

Snap = tuple[int, int, int, int]
# Tests switch folder events off to prove the rescan alone finds files.
NO_EVENTS_ENV = "INGESTD_NO_WATCH_EVENTS"
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


class Intake:
    """Scan, events and rescans in; ``queued`` jobs out."""

    def __init__(
        self,
        *,
        config: Config,
        ledger: Ledger,
        checks: FinishedChecks,
        is_active: Callable[[int], bool],
        on_ready: Callable[[], None],
    ) -> None:
        self.watch = config.watch
        self.sidecars = config.record.sidecar
        self.ledger = ledger
        self.checks = checks
        self.is_active = is_active
        self.on_ready = on_ready
        self.filter = PathFilter(self.watch.include, self.watch.exclude)
        self.roots = [Path(os.path.abspath(p)) for p in self.watch.paths]
        self.tracking: dict[int, _Tracked] = {}
        self.rescan_now = asyncio.Event()
        self.watcher_alive = False
        self.last_scan_at: float | None = None
        # Scans and events both turn paths into jobs; one at a time, or both add the same path.
        self._observing = asyncio.Lock()
        self._bad_names: set[Path] = set()

    # --- finding ------------------------------------------------------------------------

    def _walk(self, root: Path) -> list[tuple[Path, Snap]]:
        found = []
        for path in iter_files(
            root,
            self.filter,
            recursive=self.watch.recursive,
            follow_symlinks=self.watch.follow_symlinks,
            on_error=_log_scan_error,
        ):
            if self._bad_name(path):
                continue
            try:
                current = snapshot(path)
            except OSError as err:
                _log_scan_error(path, err)
                continue
            if current is not None:
                found.append((path, as_snap(current)))
        return found

    def _bad_name(self, path: Path) -> bool:
        """True for a name that is not UTF-8 (a Latin-1 share, say): the ledger, the record name
        and the log all need text, so the file is left alone, with one warning per path."""
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            if path not in self._bad_names:
                self._bad_names.add(path)
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
        for root in self.roots:
            found = await asyncio.to_thread(self._walk, root)
            async with self._observing:
                known = await self.ledger.known_snapshots()
                for path, snap in found:
                    files += 1
                    changed += await self._observe(path, root, snap, known.get(str(path)))
        self.last_scan_at = time.time()
        log.info(
            "watcher.rescan",
            why=why,
            files=files,
            new_or_changed=changed,
            seconds=round(time.monotonic() - started, 3),
        )
        return changed

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
        current = await asyncio.to_thread(snapshot, path)
        if current is None:
            return  # gone: the settle loop notices if it was waiting
        if path.is_symlink() and not self.watch.follow_symlinks:
            return
        async with self._observing:
            known = await self.ledger.known_snapshots_for(str(path))
            await self._observe(path, root, as_snap(current), known)

    async def _observe(
        self, path: Path, root: Path, snap: Snap, known: tuple[int, Snap, State] | None
    ) -> int:
        if known is None or (known[2] in (State.DONE, State.SKIPPED) and known[1] != snap):
            job = await self.ledger.add_job(
                path=str(path), root=str(root), snapshot=snap, state=State.WAITING
            )
            now = time.monotonic()
            self.tracking[job.id] = _Tracked(snap, now, now)
            log.info("file.discovered", job_id=job.id, path=str(path), size=snap[0])
            return 1
        job_id, known_snap, state = known
        if state in (State.DONE, State.SKIPPED) or self.is_active(job_id):
            return 0  # already uploaded, or a worker owns it and checks the file itself
        if state == State.WAITING:
            if job_id not in self.tracking:
                now = time.monotonic()
                self.tracking[job_id] = _Tracked(snap, now, now)
            return 0
        if known_snap == snap:
            return 0
        job = await self.ledger.get_job(job_id)
        await self.ledger.reset_to_waiting(job, snap, "file changed")
        now = time.monotonic()
        self.tracking[job_id] = _Tracked(snap, now, now)
        log.info("file.changed", job_id=job_id, path=str(path), was=state.value, size=snap[0])
        return 1

    # --- settling ---------------------------------------------------------------------------

    def tick_interval(self) -> float:
        return max(0.2, min(1.0, self.watch.settle / 5))

    async def settle(self) -> None:
        """One pass over the waiting files: queue those that are finished."""
        waiting = await self.ledger.jobs_in([State.WAITING])
        present = {job.id for job in waiting}
        for job_id in list(self.tracking):
            if job_id not in present:
                del self.tracking[job_id]
        for job in waiting:
            if not self.is_active(job.id):
                try:
                    await self._settle_one(job.id, Path(job.path), bool(job.force))
                except OSError as err:
                    # One file's trouble (a folder it cannot search, a name too long for
                    # its marker) must not stop the loop, nor hold up the other files.
                    await self._cannot_check(job.id, Path(job.path), job.snapshot, err)

    async def _cannot_check(self, job_id: int, path: Path, snap: Snap, err: OSError) -> None:
        now = time.monotonic()
        tracked = self.tracking.setdefault(job_id, _Tracked(snap, now, now))
        await self._wait(job_id, path, tracked, f"cannot check the file ({err.strerror or err})")

    async def _settle_one(self, job_id: int, path: Path, force: bool) -> None:
        current = await asyncio.to_thread(snapshot, path)
        now = time.monotonic()
        if current is None:
            await self.ledger.forget(job_id)
            self.tracking.pop(job_id, None)
            log.info("file.vanished", job_id=job_id, path=str(path))
            return
        snap = as_snap(current)
        tracked = self.tracking.setdefault(job_id, _Tracked(snap, now, now))
        if snap != tracked.snap:
            tracked.snap, tracked.since = snap, now
            self._log_still_changing(job_id, path, tracked, now)
            await self._wait(job_id, path, tracked, "still being written", log_it=False)
        if force:
            await self._identify(job_id, path, tracked, now, force=True)
            return
        if now - tracked.since < self.watch.settle:
            return
        reason = "empty file (0 bytes)" if snap[0] == 0 else None
        if reason is None:
            reason = await asyncio.to_thread(self.checks.why_not_finished, path, snap[0])
        if reason is None and self.sidecars:
            # A sidecar must settle too; wall time, as it is compared with the file's mtime.
            reason = await asyncio.to_thread(
                sidecar_wait_reason, path, self.watch.settle, time.time()
            )
        if reason is None:
            await self._identify(job_id, path, tracked, now, force=False)
        else:
            await self._wait(job_id, path, tracked, reason)

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
        self, job_id: int, path: Path, tracked: _Tracked, now: float, *, force: bool
    ) -> None:
        """A finished file: skip it if its content is already on the server, else queue it."""
        try:
            print_ = await asyncio.to_thread(fingerprint, path, tracked.snap[0])
            twin = None if force else await self.ledger.twin_of(print_, job_id)
            same = twin is not None and twin.state == State.DONE and bool(twin.sha256)
            if twin is not None and same:
                same = await asyncio.to_thread(full_sha256, path) == twin.sha256
        except OSError as exc:
            await self._wait(job_id, path, tracked, f"cannot read the file ({exc.strerror})")
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
            await self._queue(job_id, path, tracked, now, print_)

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

    async def _queue(
        self, job_id: int, path: Path, tracked: _Tracked, now: float, print_: str
    ) -> None:
        size, mtime_ns, inode, device = tracked.snap
        await self.ledger.update(
            job_id,
            state=State.QUEUED,
            fingerprint=print_,
            size=size,
            mtime_ns=mtime_ns,
            inode=inode,
            device=device,
            wait_reason=None,
            next_attempt_at=0,
        )
        self.tracking.pop(job_id, None)
        log.info(
            "file.ready",
            job_id=job_id,
            path=str(path),
            size=size,
            waited_s=round(now - tracked.first_seen, 1),
        )
        self.on_ready()

    async def run_settle(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.settle()
            await _sleep_or(stop, self.tick_interval())

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
                await _sleep_or(stop, WATCH_RESTART_DELAY)
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
            await _sleep_or(stop, WATCH_RESTART_DELAY)


def _log_scan_error(path: Path, err: OSError) -> None:
    log.warning("watcher.unreadable", path=str(path), error=err.strerror or str(err))


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)
