"""The directory walker of the start-up scan and the rescans: every wanted file under a root.

Which names are wanted is :class:`ingestd.config.patterns.PathFilter`'s decision;
this module only walks, and must stay cheap on 100,000 files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from ingestd.config.patterns import PathFilter

OnError = Callable[[Path, OSError], None]
# A folder still to read, with its (st_dev, st_ino) when symlinks are followed.
_Folder = tuple[str, tuple[int, int] | None]


def iter_files(
    root: Path,
    path_filter: PathFilter,
    *,
    recursive: bool,
    follow_symlinks: bool,
    on_error: OnError | None = None,
) -> Iterator[Path]:
    """Yield every wanted regular file under ``root``, in no particular order.

    This is the start-up scan and the periodic rescan, so it must be cheap on
    100,000 files: it relies on ``os.scandir``'s cached entry types and stats
    nothing it can avoid. Excluded folders are pruned. Symlinks are skipped
    unless ``follow_symlinks``; then every folder is read once, however many
    links lead to it (so loops end), and real folders are read before linked
    ones, so a file reachable both ways keeps its real path from scan to scan.
    A folder that cannot be read is skipped and passed to ``on_error`` (the
    caller logs it); files that vanish mid-scan are dropped.
    """
    for entry in iter_file_entries(
        root, path_filter, recursive=recursive, follow_symlinks=follow_symlinks, on_error=on_error
    ):
        yield Path(entry.path)


def iter_file_entries(
    root: Path,
    path_filter: PathFilter,
    *,
    recursive: bool,
    follow_symlinks: bool,
    on_error: OnError | None = None,
) -> Iterator[os.DirEntry[str]]:
    """:func:`iter_files` as ``os.DirEntry`` objects, for a caller that walks 100,000 files:
    no ``Path`` per file, and ``entry.stat()`` reuses what following a symlink learnt."""
    for _folder, files in _walk(root, path_filter, recursive, follow_symlinks, on_error, False):
        yield from files


def iter_folders(
    root: Path,
    path_filter: PathFilter,
    *,
    recursive: bool,
    follow_symlinks: bool,
    on_error: OnError | None = None,
    read: set[str] | None = None,
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """The wanted files a folder at a time, for the scans: (the folder, its files).

    Each folder is read through a file descriptor, so ``entry.stat()`` costs a
    ``fstatat()`` of one name instead of a ``stat()`` of a whole path (a scan of a
    million files is mostly its ``stat()`` calls). So ``entry.path`` is the bare
    name, as ``entry.name``; and the descriptor is open until the next folder is
    asked for: stat the entries before that. ``read`` collects every folder that
    could be read, those without wanted files too (the folder events watch these).
    """
    yield from _walk(root, path_filter, recursive, follow_symlinks, on_error, True, read)


def _walk(
    root: Path,
    path_filter: PathFilter,
    recursive: bool,
    follow_symlinks: bool,
    on_error: OnError | None,
    by_fd: bool,
    read: set[str] | None = None,
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    try:
        root_stat = root.stat()  # a missing root is worth reporting; a vanished subfolder is not
    except OSError as err:
        _report(on_error, root, err)
        return
    root_key = (root_stat.st_dev, root_stat.st_ino) if follow_symlinks else None
    real: list[_Folder] = [(str(root), root_key)]
    linked: list[_Folder] = []
    visited: set[tuple[int, int]] = set()
    while real or linked:
        folder, key = real.pop() if real else linked.pop()
        if key is not None:
            if key in visited:
                continue
            visited.add(key)
        scan = _scan_folder(folder, path_filter, follow_symlinks, on_error, by_fd)
        if read is not None and scan.read:
            read.add(folder)
        try:
            if scan.files:
                yield folder, scan.files
        finally:
            if scan.fd is not None:
                os.close(scan.fd)
        if recursive:
            real.extend(scan.real)
            linked.extend(scan.linked)


def _report(on_error: OnError | None, path: Path, err: OSError) -> None:
    if on_error is not None:
        on_error(path, err)


class _Scan:
    """What one folder holds: wanted files, and real and symlinked subfolders to enter;
    the folder's descriptor when it was read through one."""

    __slots__ = ("fd", "files", "linked", "prefix", "read", "real")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # the folder's path and a slash: a subfolder's path starts so
        self.fd: int | None = None
        self.files: list[os.DirEntry[str]] = []
        self.real: list[_Folder] = []
        self.linked: list[_Folder] = []
        self.read = False  # listed to the end (not gone, not unreadable)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _scan_folder(
    folder: str,
    path_filter: PathFilter,
    follow_symlinks: bool,
    on_error: OnError | None,
    by_fd: bool,
) -> _Scan:
    """List one folder.

    Collected before anything is yielded, so an OSError from reading the
    directory is caught here and never confused with the consumer's code.
    """
    scan = _Scan(folder if folder.endswith("/") else folder + "/")
    wants_file, files = path_filter.wants_file, scan.files
    # The usual globs (``*.mp4``, ``.*``) as a set lookup, inline; else wants_file().
    extensions, prefixes = path_filter.by_extension or (frozenset(), ("",))
    try:
        if by_fd:
            scan.fd = os.open(folder, _DIR_FLAGS)
        with os.scandir(folder if scan.fd is None else scan.fd) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):  # the usual entry, inline
                    name = entry.name
                    if name[name.rfind(".") :] in extensions:
                        if not name.startswith(prefixes):
                            files.append(entry)
                    elif wants_file(name):
                        files.append(entry)
                else:
                    _classify(entry, path_filter, follow_symlinks, scan)
        scan.read = True
    except FileNotFoundError:
        pass  # the folder went away between being listed and being read
    except OSError as err:
        _report(on_error, Path(folder), err)
    return scan


def _classify(
    entry: os.DirEntry[str], path_filter: PathFilter, follow_symlinks: bool, scan: _Scan
) -> None:
    """Sort one entry into ``scan``; names are filtered before anything is statted."""
    if entry.is_file(follow_symlinks=False):  # a regular file (not a link): the usual entry
        if path_filter.wants_file(entry.name):
            scan.files.append(entry)
    elif entry.is_symlink():
        if follow_symlinks:
            _classify_symlink(entry, path_filter, scan)
    elif entry.is_dir(follow_symlinks=False) and path_filter.wants_dir(entry.name):
        key = _folder_key(entry) if follow_symlinks else None
        scan.real.append((scan.prefix + entry.name, key))
    # else: fifos, sockets, devices, unwanted names, or entries already gone


def _classify_symlink(entry: os.DirEntry[str], path_filter: PathFilter, scan: _Scan) -> None:
    """Follow a symlink only to a regular file or a folder; a dangling link is skipped."""
    wants_file = path_filter.wants_file(entry.name)
    if not wants_file and not path_filter.wants_dir(entry.name):
        return
    try:
        info = entry.stat(follow_symlinks=True)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and wants_file:
        scan.files.append(entry)
    elif stat.S_ISDIR(info.st_mode) and path_filter.wants_dir(entry.name):
        scan.linked.append((scan.prefix + entry.name, (info.st_dev, info.st_ino)))


def _folder_key(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    """A real folder's identity, so links to it are recognised; None if it cannot be statted."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)
