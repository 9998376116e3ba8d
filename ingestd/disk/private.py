"""Files and folders ingestd makes for itself: 0600 and 0700, whatever the umask.

They are also written durably (:func:`write_private`, :func:`fsync_folder`),
so a power cut leaves each whole or as it was. The ledger (and so its
``-wal`` and ``-shm``, which SQLite creates with the ledger's own mode), its
backups, the lock file and ``NAME.error.txt`` hold
file names and error texts that are nobody else's business. The Docker image
sets no umask, and systemd's default one leaves files world-readable, so the
mode is set explicitly (``fchmod``/``chmod``) rather than left to the umask.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    return missing[::-1]


def make_private_folders(folder: Path) -> None:
    """Make ``folder`` and its missing parents, each 0700; existing folders are left as they are."""
    for made in missing_folders(folder):
        try:
            os.mkdir(made, PRIVATE_FOLDER)
        except FileExistsError:  # made by someone else meanwhile: theirs, not ours
            continue
        os.chmod(made, PRIVATE_FOLDER)


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags)``, creating the file 0600 first if it is missing."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists (SQLite then keeps that mode)."""
    os.close(open_private(path, os.O_WRONLY))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) durably: a temporary name, fsync, rename, fsync of the
    folder. After a power cut ``path`` holds all of ``text`` or is as it was, never a part;
    a symlink planted under either name is replaced, never followed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, flags | os.O_EXCL, PRIVATE_FILE)
        try:
            os.fchmod(fd, PRIVATE_FILE)
            data = text.encode()
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


# A folder fsync that the file system does not do at all (some network shares): nothing to wait for.
_NO_FOLDER_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (a create, rename, link or unlink in it), before
    a ledger commit that depends on them: on Linux a name survives a power cut only once
    its folder is fsynced. A file system that cannot fsync a folder is let be."""
    try:
        fsync_path(folder)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_FSYNC:
            raise


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by name (a folder: so a rename or link in it is durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
