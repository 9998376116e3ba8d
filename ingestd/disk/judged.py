"""The file that was judged: every look is ``lstat``, every open proves it is the same file.

design.md, "Trust rules". A video or sidecar is found as a regular file, judged
(settled, checked, fingerprinted) and later read for its upload. In between,
anyone who may write to the watch folder can swap the path (``mv -T``) for a
symlink to a private file, a FIFO that blocks its reader forever, or another
file (issue 11). So:

- a look never follows a symlink in the last part of a path (``lstat``), unless
  ``watch.follow_symlinks``: then the link is resolved when the file is looked
  at, and the target's identity is what gets recorded and checked;
- a file is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a symlink swapped in is not
  followed, a FIFO or device is not waited on), and ``fstat`` on the descriptor
  must show a regular file with the device and inode that were judged before a
  byte is read; readers then read that descriptor, never the path again;
- with ``follow_symlinks`` off, a path whose folder resolves outside its watch
  folder (a folder swapped for a symlink) is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ingestd.errors import FileRefused

__all__ = [
    "FileSnapshot",
    "Judged",
    "OpenRule",
    "as_snapshot",
    "look",
    "open_judged",
    "open_now",
    "snapshot",
]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FileSnapshot:
    """What settle compares between two looks at a file; a new inode means a new file."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileSnapshot:
        return cls(
            size=info.st_size, mtime_ns=info.st_mtime_ns, inode=info.st_ino, device=info.st_dev
        )


# A snapshot, or the ledger's (size, mtime_ns, inode, device) of one.
Judged = FileSnapshot | tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class OpenRule:
    """How watched files are looked at and opened (``watch.follow_symlinks``, ``watch.paths``).

    ``roots`` are the watch folders: with ``follow_symlinks`` off, a file's folder must
    resolve inside the one it is under. No roots: no folder check (a file given by hand).
    """

    follow_symlinks: bool = False
    roots: tuple[Path, ...] = ()

    @classmethod
    def for_watch(cls, paths: Iterable[Path | str], follow_symlinks: bool) -> OpenRule:
        return cls(follow_symlinks, tuple(Path(os.path.abspath(path)) for path in paths))


def look(path: Path, *, follow_symlinks: bool = False) -> os.stat_result | None:
    """``lstat`` of ``path`` (``stat`` when following symlinks); None if it is missing."""
    try:
        return os.stat(path, follow_symlinks=follow_symlinks)
    except (FileNotFoundError, NotADirectoryError):
        return None


def snapshot(path: Path, *, follow_symlinks: bool = False) -> FileSnapshot | None:
    """The regular file at ``path`` as it is now; None if it is missing or is not a regular
    file (a symlink, unless followed; a FIFO, device, socket or folder).

    Other OSErrors (such as a folder that cannot be searched) propagate, so they
    are not mistaken for a deleted file.
    """
    info = look(path, follow_symlinks=follow_symlinks)
    if info is None or not stat.S_ISREG(info.st_mode):
        return None
    return FileSnapshot.of(info)


# The device of a file whose ledger cannot know it: a shared ledger's job is read on hosts
# that number the same share's device differently (st_dev is never compared across them).
ANY_DEVICE = -1


def same_identity(found: tuple[int, int, int, int], expected: tuple[int, int, int, int]) -> bool:
    """(size, mtime_ns, inode, device) agree; a device of ANY_DEVICE agrees with any."""
    if found[:3] != expected[:3]:
        return False
    return ANY_DEVICE in (found[3], expected[3]) or found[3] == expected[3]


def as_snapshot(judged: Judged) -> FileSnapshot:
    """A snapshot, from the ledger's (size, mtime_ns, inode, device) where need be."""
    if isinstance(judged, FileSnapshot):
        return judged
    size, mtime_ns, inode, device = judged
    return FileSnapshot(size=size, mtime_ns=mtime_ns, inode=inode, device=device)


def _check_folder(path: Path, rule: OpenRule) -> None:
    """Refuse a path whose folder resolves outside the watch folder it is under."""
    if rule.follow_symlinks or not rule.roots:
        return
    root = next((r for r in rule.roots if path.is_relative_to(r)), None)
    if root is None:
        raise FileRefused(f"{path.name} is not under a watch folder")
    real_root, real_folder = os.path.realpath(root), os.path.realpath(path.parent)
    if os.path.commonpath([real_root, real_folder]) != real_root:
        raise FileRefused(f"the folder of {path.name} resolves outside the watch folder")


def open_judged(path: Path, judged: Judged, rule: OpenRule) -> int:
    """A descriptor of the very file that was judged at ``path``, for reading.

    Raises FileNotFoundError when nothing is there, FileRefused when what is
    there is not that regular file (see the module docstring). The caller
    closes the descriptor.
    """
    path = Path(os.path.abspath(path))
    _check_folder(path, rule)
    target = Path(os.path.realpath(path)) if rule.follow_symlinks else path
    try:
        fd = os.open(target, _OPEN_FLAGS)
    except OSError as err:
        if err.errno == errno.ELOOP:  # the last part is a symlink, and O_NOFOLLOW said no
            raise FileRefused(f"{path.name} is now a symlink; it is not followed") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path.name} is not a regular file now; it is not read")
        expected = as_snapshot(judged)
        device_differs = expected.device not in (ANY_DEVICE, info.st_dev)
        if device_differs or info.st_ino != expected.inode:
            raise FileRefused(f"{path.name} is another file now than the one checked")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_now(path: Path, rule: OpenRule) -> tuple[int, FileSnapshot]:
    """Look at ``path`` and open what the look found: for a file read at once, whose
    snapshot is this look (a sidecar, a file named by hand). Raises as :func:`open_judged`,
    and FileRefused at once for what is not a regular file: that is never opened."""
    info = look(path, follow_symlinks=rule.follow_symlinks)
    if info is None:
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise FileRefused(f"{path.name} is {what}; it is not read")
    judged = FileSnapshot.of(info)
    return open_judged(path, judged, rule), judged
