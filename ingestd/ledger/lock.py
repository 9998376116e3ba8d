"""One process at a time on a ledger: an exclusive ``flock`` on ``LEDGER.lock``.

Two daemons on one ledger would both take the same queued job and upload it
twice, and a restore under a running daemon would be overwritten by its next
commit. SQLite's own locking does not prevent either (both are valid
transactions), so ``ingestd run`` and ``ingestd ledger restore`` take this lock
before they open the ledger.

Why ``flock`` on a separate file: the kernel drops the lock when the holder
dies in any way (SIGKILL, OOM, power cut), so there is never a stale lock to
clean up, and the file is never deleted (deleting a lock file races with the
next taker). The holder's pid is written inside only to name it in the
refusal. Read-only commands (``status``, ``ledger check``) and the small
writes of ``retry`` / ``pause`` go through SQLite's own locking and take no
part in this.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from ingestd.disk.private import make_private_folders, open_private
from ingestd.errors import LedgerBusy, LedgerError


def lock_path(ledger: Path) -> Path:
    """``ledger.db`` -> ``ledger.db.lock``, beside it."""
    return ledger.with_name(ledger.name + ".lock")


class LedgerLock:
    """``with LedgerLock(path):`` - hold the ledger exclusively, or raise :class:`LedgerBusy`."""

    def __init__(self, ledger: Path, *, purpose: str = "") -> None:
        self.ledger = ledger
        self.path = lock_path(ledger)
        self.purpose = purpose  # appended to the refusal, e.g. "; stop it before restoring"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "pid unknown"
            raise LedgerBusy(
                f"another ingestd ({who}) is using the ledger {self.ledger}{self.purpose}"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise LedgerError(f"cannot lock {self.path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # a read-only lock file still locks
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        try:
            make_private_folders(self.path.parent)
            return open_private(self.path, os.O_RDWR)
        except OSError as first:
            # A read-only folder or lock file: flock works on a read-only descriptor too.
            try:
                return os.open(self.path, os.O_RDONLY)
            except OSError:
                raise LedgerError(
                    f"cannot create the lock file {self.path}: {first.strerror}"
                ) from None

    def release(self) -> None:
        """Unlock (closing the descriptor unlocks). The file stays: see the module's docstring."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LedgerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(ledger: Path) -> int | None:
    """The pid the lock file names: its holder, or its last one (the file keeps the pid of
    a holder that has gone). Takes no lock and creates nothing, for ``ingestd status``."""
    try:
        fd = os.open(lock_path(ledger), os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    """The holder's pid, if it has written it yet."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    return None
