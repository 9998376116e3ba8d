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
        scan = _scan_folder(folder, path_filter, follow_symlinks, on_error)
        yield from scan.files
        if recursive:
            real.extend(scan.real)
            linked.extend(scan.linked)


def _report(on_error: OnError | None, path: Path, err: OSError) -> None:
    if on_error is not None:
        on_error(path, err)


class _Scan:
    """What one folder holds: wanted files, and real and symlinked subfolders to enter."""

    __slots__ = ("files", "linked", "real")

    def __init__(self) -> None:
        self.files: list[os.DirEntry[str]] = []
        self.real: list[_Folder] = []
        self.linked: list[_Folder] = []


def _scan_folder(
    folder: str, path_filter: PathFilter, follow_symlinks: bool, on_error: OnError | None
) -> _Scan:
    """List one folder.

    Collected before anything is yielded, so an OSError from reading the
    directory is caught here and never confused with the consumer's code.
    """
    scan = _Scan()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                _classify(entry, path_filter, follow_symlinks, scan)
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
        scan.real.append((entry.path, key))
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
        scan.linked.append((entry.path, (info.st_dev, info.st_ino)))


def _folder_key(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    """A real folder's identity, so links to it are recognised; None if it cannot be statted."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)
