"""Moving a recording into a folder: never replacing, never a partial file under a real name.

- Same file system: ``renameat2(RENAME_NOREPLACE)``; where the file system
  lacks it, ``link`` then ``unlink`` (a link never replaces either).
- Across file systems (EXDEV): copy to a temporary name in the target
  folder, fsync it, put it in place with the same no-replace rename, fsync
  the folder, and only then unlink the source. Any failure (a full disk)
  removes the temporary copy, so the source stays whole and nothing is left
  under the real name or as an empty ``NAME (N)`` (issue 11, finding 9).

A taken name gets the next `` (N)`` suffix at the moment of placing, so
there is no check-then-move race. Copies keep the source's mode, owner
(where allowed) and times; folders made for them take the mode of the
source folder in the same place.

What a move or deletion may act on is *the file that was uploaded*:
:class:`Identity` is the ledger's record of it (inode, size, mtime).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ingestd.disk.private import fsync_folder, missing_folders

NAME_MAX = 255
_COPY_BLOCK = 1024 * 1024
_TEMPORARY_PREFIX = ".ingestd-move-"  # a dot name: watch.exclude's default ".*" skips it
# renameat2(2) through libc (glibc 2.28+); Python's os module has no RENAME_NOREPLACE.
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
if _renameat2 is not None:
    _renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    _renameat2.restype = ctypes.c_int
# The file system (or kernel) cannot rename without replacing: fall back to link + unlink.
_NO_NOREPLACE = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})
# The file system has no hard links either (some network shares).
_NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True, slots=True)
class Identity:
    """The file the ledger vouches for. The device is kept but not compared: a remount can
    give the same file system a new device number."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, info: os.stat_result) -> Identity:
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)

    def matches(self, info: os.stat_result) -> bool:
        return stat.S_ISREG(info.st_mode) and (
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
        ) == (self.inode, self.size, self.mtime_ns)


class NotThatFile(OSError):
    """The file at a path is not the one the ledger vouches for: ``reason`` says how."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason  # "missing" or "replaced"


def check_identity(path: Path, expected: Identity) -> None:
    """Raise :class:`NotThatFile` unless ``path`` (not following a symlink) is ``expected``."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotThatFile(path, "missing") from None
    if not expected.matches(info):
        raise NotThatFile(path, "replaced")


def fit_name(stem: str, tail: str) -> str:
    """``stem + tail``, the stem shortened so the name stays within 255 bytes."""
    budget = NAME_MAX - len(tail.encode())
    return stem.encode()[:budget].decode("utf-8", "ignore") + tail


def candidate_names(name: str) -> Iterator[str]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``, ... each within 255 bytes."""
    stem, suffix = os.path.splitext(name)
    yield fit_name(stem, suffix)
    number = 0
    while True:
        number += 1
        yield fit_name(stem, f" ({number}){suffix}")


def find_moved_copy(
    folder: Path, name: str, expected: Identity, same_content: Callable[[Path], bool]
) -> Path | None:
    """The copy of ``expected`` that an interrupted :func:`move_into` already put into
    ``folder`` as ``name`` or ``name (N)``, if any.

    A crash between the move and the ledger's commit leaves the source gone and its
    copy in place: the move is done, and only its commit is missing. A rename keeps
    the inode; a copy across file systems keeps size and mtime, and
    ``same_content(path)`` (the full sha256 against the uploaded one) decides.
    Candidates are looked at up to the first free name (where a move would have put it).
    """
    for candidate in candidate_names(name):
        target = folder / candidate
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode) or (info.st_size, info.st_mtime_ns) != (
            expected.size,
            expected.mtime_ns,
        ):
            continue
        if info.st_ino == expected.inode or same_content(target):
            return target
    raise AssertionError("unreachable")  # candidate_names never ends


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; FileExistsError if ``target`` exists (never replaced)."""
    if _renameat2 is not None:
        if (
            _renameat2(
                _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
            )
            == 0
        ):
            return
        code = ctypes.get_errno()
        if code not in _NO_NOREPLACE:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # Neither no-replace rename nor links: the best left is a check just before.
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.rename(source, target)
        return
    try:
        os.unlink(source)
    except BaseException:
        target.unlink(missing_ok=True)  # one name, as before
        raise


def _place(source: Path, folder: Path, name: str) -> Path:
    """``source`` renamed into ``folder`` under the first free one of :func:`candidate_names`."""
    for candidate in candidate_names(name):
        target = folder / candidate
        try:
            rename_no_replace(source, target)
        except FileExistsError:
            continue
        return target
    raise AssertionError("unreachable")  # candidate_names never ends


def move_into(source: Path, folder: Path, name: str, expected: Identity | None = None) -> Path:
    """Move ``source`` into ``folder`` as ``name`` (or ``name (N)``); returns where it went.

    With ``expected``, only while ``source`` is that very file (else
    :class:`NotThatFile`, and nothing moved). The folder must exist.
    """
    if expected is not None:
        check_identity(source, expected)
    try:
        placed = _place(source, folder, name)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        return _copy_across(source, folder, name, expected)
    # Both names durable before the ledger says "moved" (a retry finds the copy anyway).
    fsync_folder(folder)
    if source.parent != folder:
        fsync_folder(source.parent)
    return placed


def _copy_across(source: Path, folder: Path, name: str, expected: Identity | None) -> Path:
    """The cross-file-system move: see the module's docstring."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (expected and not expected.matches(info)):
            raise NotThatFile(source, "replaced")
        temporary = _copy_to_temporary(fd, info, folder)
    finally:
        os.close(fd)
    try:
        placed = _place(temporary, folder, name)
    finally:
        temporary.unlink(missing_ok=True)
    try:
        fsync_folder(folder)  # the copy's name is durable before the source goes
        if expected is not None:  # replaced while it was copied: the copy is not of it
            check_identity(source, expected)
        os.unlink(source)
    except BaseException:
        placed.unlink(missing_ok=True)
        raise
    fsync_folder(source.parent)  # the unlink durable before the ledger says "moved"
    return placed


def _copy_to_temporary(fd: int, info: os.stat_result, folder: Path) -> Path:
    """A full, fsynced copy of the open file ``fd`` in ``folder`` under a temporary name."""
    temporary, out = _new_temporary(folder)
    try:
        try:
            while block := os.read(fd, _COPY_BLOCK):
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view) :]
            os.fchmod(out, stat.S_IMODE(info.st_mode))
            with contextlib.suppress(PermissionError):  # not root: the copy is ours
                os.fchown(out, info.st_uid, info.st_gid)
            os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _new_temporary(folder: Path) -> tuple[Path, int]:
    for number in range(100):
        temporary = folder / f"{_TEMPORARY_PREFIX}{os.getpid()}-{number}"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return temporary, os.open(temporary, flags, 0o600)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def make_folders_like(folder: Path, target_root: Path, source_root: Path) -> list[Path]:
    """Make ``folder`` (at or below ``target_root``) and its missing parents, each with the mode
    of the source folder in the same place below ``source_root`` (above it: the root's mode).
    Returns the folders made, outermost first."""
    made_here = []
    for made in missing_folders(folder):
        like = source_root
        if made.is_relative_to(target_root):
            like = source_root / made.relative_to(target_root)
        try:
            info = os.stat(like)
        except OSError:
            info = os.stat(source_root)
        try:
            os.mkdir(made, 0o700)
        except FileExistsError:  # made by someone else meanwhile: theirs
            continue
        made_here.append(made)
        os.chmod(made, stat.S_IMODE(info.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(made, info.st_uid, info.st_gid)
        fsync_folder(made.parent)  # the new folder's name survives a power cut
    return made_here


def remove_folders(folders: list[Path]) -> None:
    """Remove the folders :func:`make_folders_like` made (innermost first) while still empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return
