"""``ingestd check``'s lines about this machine's places: the ledger folder (or the shared
ledger), ``move_to`` and ``failed_to``, and the ``status.listen`` port. Each says what is
wrong and what to do."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ingestd.config.schema import Config
from ingestd.ledger.lock import lock_path

Say = Callable[[bool, str], None]


def read_only(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def existing_parent(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing folder above."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _not_writable(path: Path) -> str:
    if read_only(path):
        return "is on a read-only file system (remount it read-write, or choose another place)"
    return "is not writable by this user (give the user ingestd runs as write access)"


def check_ledger_folder(config: Config, say: Say) -> None:
    folder = config.ledger.path.parent
    if folder.is_dir():
        writable = os.access(folder, os.W_OK | os.X_OK) and not read_only(folder)
        say(
            writable,
            f"ledger folder {folder} " + ("is writable" if writable else _not_writable(folder)),
        )
        return
    parent = existing_parent(folder)
    if not parent.is_dir():
        say(False, f"ledger folder {folder}: {parent} is not a folder (ledger.path)")
    elif os.access(parent, os.W_OK | os.X_OK) and not read_only(parent):
        say(
            True,
            f"ledger folder {folder} does not exist yet: it will be created ({parent} is writable)",
        )
    else:
        say(
            False,
            f"ledger folder {folder} does not exist, and {parent}, where it would be created, "
            + _not_writable(parent)
            + "; or create the folder yourself",
        )


def check_after_upload_folders(config: Config, say: Say) -> None:
    after = config.after_upload
    folders = [("after_upload.move_to", after.move_to)] if after.action == "move" else []
    folders.append(("after_upload.failed_to", after.failed_to))
    for key, folder in folders:
        if folder is None:
            continue
        if not folder.is_dir():
            say(False, f"{key} {folder} does not exist: create it (ingestd does not)")
        elif not os.access(folder, os.W_OK | os.X_OK) or read_only(folder):
            say(False, f"{key} {folder} {_not_writable(folder)}")
        else:
            say(True, f"{key} {folder} is writable")


def check_status_port(config: Config, say: Say, *, node_daemon: int | None = None) -> None:
    """``status.listen`` must be free, or held by this ledger's daemon: the one that holds
    the SQLite ledger's lock, or in a shared ledger ``node_daemon`` (this node's daemon,
    by its heartbeat; a shared ledger has no lock file)."""
    listen = config.status.listen
    if listen is None:
        return
    host, port = listen
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    problem = _bind_problem(host, port)
    if problem is None:
        say(True, f"status.listen {where} is free")
        return
    if problem != errno.EADDRINUSE:
        say(False, f"status.listen {where} cannot be listened on ({os.strerror(problem)})")
        return
    shared = config.ledger.shared
    holder = node_daemon if shared else _ledger_holder(config.ledger.path)
    if holder is not None and _listens_on(holder, port):
        who = f"node {config.ledger.node}'s ingestd" if shared else "the ingestd of this ledger"
        say(True, f"status.listen {where} is held by {who} (pid {holder})")
        return
    say(
        False,
        f"status.listen {where} is taken by another program: stop it, or choose another port",
    )


def _bind_problem(host: str, port: int) -> int | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


def _ledger_holder(ledger: Path) -> int | None:
    """The pid of the process holding this ledger's lock, if one does (nothing is created)."""
    try:
        fd = os.open(lock_path(ledger), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with contextlib.suppress(OSError, ValueError):
                return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip())
            return None
        return None  # nobody holds it
    finally:
        os.close(fd)


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` owns a socket listening on ``port`` (Linux's /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    try:
        links = [os.readlink(entry) for entry in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return bool(inodes)  # not ours to look into: the lock's holder is the best we know
    return any(link == f"socket:[{inode}]" for link in links for inode in inodes)
