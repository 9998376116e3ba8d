"""Is a settled file finished? The checks besides settle: open writers, container, done marker.

Settle (size and mtime unchanged for ``watch.settle``) is tracked by the
caller from :func:`snapshot` results. Everything here blocks on the file
system or ``/proc``, so the caller runs it via ``asyncio.to_thread``. A file
that fails a check goes back to waiting, never to ``failed`` (design.md,
"Finished detection").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ingestd.disk.judged import FileSnapshot as FileSnapshot
from ingestd.disk.judged import Judged, OpenRule, as_snapshot, open_judged
from ingestd.disk.judged import snapshot as snapshot
from ingestd.errors import FileRefused
from ingestd.intake.mp4 import BoxVerdict, is_mp4_name, walk_boxes

LogFn = Callable[[str, dict[str, object]], None]

_PROC = "/proc"
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)
#: Container verdicts kept (one per file snapshot): the files waiting at once, with room.
VERDICTS_KEPT = 4096


# --- open writers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WritersVerdict:
    """Processes holding a file open for writing, and whether every process could be seen."""

    writers: tuple[tuple[int, str], ...]  # (pid, comm)
    all_visible: bool


def open_writers(path: Path) -> WritersVerdict:
    """Find processes that hold ``path`` open for writing, from ``/proc/PID/fd``.

    Open files are matched by device and inode through the fd links, so odd
    names (spaces, newlines) and a deleted-and-recreated file are judged
    right. Access mode comes from ``/proc/PID/fdinfo/FD``. A non-root daemon
    cannot read other users' fd tables: ``all_visible`` is then False.
    Processes that exit mid-scan are skipped. Our own process counts too.
    """
    try:
        target = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return WritersVerdict(writers=(), all_visible=True)
    wanted = (target.st_dev, target.st_ino)
    writers: list[tuple[int, str]] = []
    all_visible = True
    for pid in _pids():
        try:
            if _writes_to(pid, wanted):
                writers.append((pid, _comm(pid)))
        except PermissionError:
            all_visible = False
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited while we looked
    return WritersVerdict(writers=tuple(writers), all_visible=all_visible)


def open_writers_of(paths: Sequence[Path]) -> dict[Path, WritersVerdict | OSError]:
    """:func:`open_writers` for many files with one look at ``/proc``.

    The settle loop checks every file that settled in a pass at once: one pass
    over the fd tables however many files, instead of one per file. A file that
    cannot be statted gets its OSError (a missing one: no writers), as
    :func:`open_writers` would raise it.
    """
    wanted: dict[tuple[int, int], list[Path]] = {}
    results: dict[Path, WritersVerdict | OSError] = {}
    for path in paths:
        try:
            target = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            results[path] = WritersVerdict(writers=(), all_visible=True)
            continue
        except OSError as err:
            results[path] = err
            continue
        wanted.setdefault((target.st_dev, target.st_ino), []).append(path)
    found: dict[tuple[int, int], list[tuple[int, str]]] = {}
    all_visible = True
    if wanted:
        for pid in _pids():
            try:
                for key in _files_written_by(pid, wanted):
                    found.setdefault(key, []).append((pid, _comm(pid)))
            except PermissionError:
                all_visible = False
            except (FileNotFoundError, ProcessLookupError):
                pass  # exited while we looked
    for key, holders in wanted.items():
        verdict = WritersVerdict(writers=tuple(found.get(key, ())), all_visible=all_visible)
        for path in holders:
            results[path] = verdict
    return results


def _files_written_by(pid: int, wanted: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of the files ``wanted`` (dev, ino) ``pid`` has open with write access."""
    keys = set(wanted)
    written: set[tuple[int, int]] = set()
    for fd, key in _open_files(pid):
        if key in keys and key not in written and _fd_writes(pid, fd):
            written.add(key)
    return written


def _pids() -> list[int]:
    """Every process id, listed once per call."""
    return [int(name) for name in os.listdir(_PROC) if name.isdigit()]


def _writes_to(pid: int, wanted: tuple[int, int]) -> bool:
    """True if ``pid`` has the file open with write access on any descriptor.

    Raises PermissionError when the fd table is not ours to read, and
    FileNotFoundError when the process is gone.
    """
    return any(_fd_writes(pid, fd) for fd in _fds_open_on(pid, wanted))


def _fds_open_on(pid: int, wanted: tuple[int, int]) -> Iterator[str]:
    """The descriptor numbers of ``pid`` that refer to the file ``wanted`` = (dev, ino)."""
    return (fd for fd, key in _open_files(pid) if key == wanted)


def _open_files(pid: int) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each descriptor number of ``pid`` with the (dev, ino) of the file it refers to."""
    with os.scandir(f"{_PROC}/{pid}/fd") as entries:
        for entry in entries:
            try:
                # stat() follows the magic link to the open file itself.
                info = os.stat(entry.path)
            except OSError:
                continue  # closed meanwhile, or an anonymous inode we cannot stat
            yield entry.name, (info.st_dev, info.st_ino)


def _fd_writes(pid: int, fd: str) -> bool:
    """Read the ``flags:`` line (octal) of ``/proc/PID/fdinfo/FD`` for the access mode."""
    try:
        with open(f"{_PROC}/{pid}/fdinfo/{fd}", encoding="ascii") as fdinfo:
            for line in fdinfo:
                if line.startswith("flags:"):
                    flags = int(line.split(":", 1)[1].strip(), 8)
                    return flags & os.O_ACCMODE in _WRITE_MODES
    except (FileNotFoundError, ProcessLookupError):
        return False  # the descriptor was closed after we saw it
    return False


def _comm(pid: int) -> str:
    """The process name for people to read; "?" if it exited meanwhile."""
    try:
        with open(f"{_PROC}/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().rstrip("\n")
    except OSError:
        return "?"


# --- the checks together ----------------------------------------------------------------------


class FinishedChecks:
    """The configured finished checks (``watch.check_open_writers``, ``check_container``,
    ``done_marker``), giving the reason a file is not finished yet.

    ``log(event, fields)`` receives the notices that should appear once, not
    on every check: one per version of a file whose container cannot be judged,
    and one per lifetime of this object (the daemon holds one) when ``/proc``
    is only partly visible. ``rule`` is how files are opened (:mod:`ingestd.disk.judged`).

    A container verdict is kept per snapshot (size, mtime, inode, device): an
    unchanged file is walked once, however many settle passes look at it
    (issue 11). At most :data:`VERDICTS_KEPT` are kept, the oldest going first.
    """

    def __init__(
        self,
        *,
        check_open_writers: bool,
        check_container: bool,
        done_marker: str | None,
        log: LogFn | None = None,
        rule: OpenRule | None = None,
    ) -> None:
        self.check_open_writers = check_open_writers
        self.check_container = check_container
        self.done_marker = done_marker or None
        self.rule = rule or OpenRule()
        self._log = log
        self._verdicts: dict[tuple[Path, tuple[int, int, int, int], int], BoxVerdict] = {}
        self._writers_not_visible_logged = False

    def marker_path(self, path: Path) -> Path | None:
        """The marker that says ``path`` is done: ``CLIP.mp4`` + ``.done`` = ``CLIP.mp4.done``."""
        if self.done_marker is None:
            return None
        return path.with_name(path.name + self.done_marker)

    def writers_of(self, paths: Sequence[Path]) -> dict[Path, WritersVerdict | OSError] | None:
        """The open-writer verdicts of many files from one look at ``/proc`` (None when
        ``check_open_writers`` is off), for :meth:`why_not_finished`'s ``writers``."""
        return open_writers_of(paths) if self.check_open_writers else None

    def why_not_finished(
        self,
        path: Path,
        size: int,
        *,
        writers: dict[Path, WritersVerdict | OSError] | None = None,
        judged: Judged | None = None,
    ) -> str | None:
        """None when every enabled check passes, else a short reason for ``ingestd status``.

        ``size`` is the settled size; the container is judged at that size, in the
        file of the snapshot ``judged`` (None: as the file is now). A file that is not
        that one any more raises FileRefused.
        The cheap, definite marker check runs first; writers before the
        container, because "open for writing by ..." explains more than
        "no moov box" about a file being recorded. ``writers`` (from
        :meth:`writers_of`) saves a look at ``/proc`` per file.
        """
        reason = self._marker_reason(path)
        if reason is None and self.check_open_writers:
            known = writers.get(path) if writers is not None else None
            if isinstance(known, OSError):
                raise known
            reason = self._writers_reason(path, known)
        if reason is None and self.check_container and is_mp4_name(path.name):
            reason = self._container_reason(path, size, judged)
        return reason

    def _marker_reason(self, path: Path) -> str | None:
        marker = self.marker_path(path)
        if marker is None:
            return None
        try:
            if marker.exists():
                return None
        except OSError as err:  # e.g. a 255-byte name: NAME.done cannot exist
            return f"cannot look for marker {marker.name} ({err.strerror or err})"
        return f"waiting for marker {marker.name}"

    def _writers_reason(self, path: Path, verdict: WritersVerdict | None = None) -> str | None:
        if verdict is None:
            verdict = open_writers(path)
        if verdict.writers:
            holders = ", ".join(f"pid {pid} ({comm})" for pid, comm in verdict.writers)
            return f"open for writing by {holders}"
        if not verdict.all_visible and not self._writers_not_visible_logged:
            self._writers_not_visible_logged = True
            self._emit(
                "finished.writers_not_visible",
                {
                    "detail": "some processes' open files are not visible to this user,"
                    " so the open-writer check relies on settle and the other checks",
                },
            )
        return None

    def _container_reason(self, path: Path, size: int, judged: Judged | None) -> str | None:
        try:
            verdict = self._container_verdict(path, size, judged)
        except FileRefused:
            raise
        except OSError as err:
            return f"cannot read the file ({err.strerror or err})"
        return None if verdict.complete or verdict.complete is None else verdict.reason

    def _container_verdict(self, path: Path, size: int, judged: Judged | None) -> BoxVerdict:
        """The box walk of this snapshot of ``path``: from the cache, or walked (and a file
        that cannot be judged logged) once."""
        if judged is None:
            judged = snapshot(path, follow_symlinks=self.rule.follow_symlinks)
            if judged is None:
                raise FileNotFoundError(2, "No such file or directory", str(path))
        seen = as_snapshot(judged)
        key = (path, (seen.size, seen.mtime_ns, seen.inode, seen.device), size)
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        fd = open_judged(path, judged, self.rule)
        try:
            verdict = walk_boxes(fd, size)
        finally:
            os.close(fd)
        if verdict.complete is None:
            self._emit("file.container_unknown", {"path": str(path), "reason": verdict.reason})
        while len(self._verdicts) >= VERDICTS_KEPT:
            del self._verdicts[next(iter(self._verdicts))]
        self._verdicts[key] = verdict
        return verdict

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        if self._log is not None:
            self._log(event, fields)
