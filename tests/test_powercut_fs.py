"""The power-cut test file system (powercut/): what survives a cut, and what runs on it.

Each test mounts the layer over a folder of its own, does something, cuts
the power (the server is SIGKILLed, its memory with everything unsynced is
gone, the mount is remounted) and looks at what the disk kept.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from powercut import PowerCutMount, mount

LIBC = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1


@pytest.fixture
def root(disk: PowerCutMount) -> Path:
    return disk.mountpoint


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, sync: bool = False) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def renameat2(old: Path, new: Path, flags: int) -> None:
    result = LIBC.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(new))


# --- data ---------------------------------------------------------------------------------


def test_fsynced_write_survives_and_unsynced_one_does_not(disk: PowerCutMount, root: Path) -> None:
    write(root / "kept", b"synced bytes", sync=True)
    fsync_path(root)
    with open(root / "kept", "ab") as handle:
        handle.write(b" and more that nobody synced")
    assert (root / "kept").read_bytes() == b"synced bytes and more that nobody synced"

    disk.cut()

    assert (root / "kept").read_bytes() == b"synced bytes"


def test_a_name_synced_without_its_data_is_an_empty_file(disk: PowerCutMount, root: Path) -> None:
    write(root / "clip.mp4", b"x" * 100_000)
    fsync_path(root)

    disk.cut()

    assert (root / "clip.mp4").stat().st_size == 0


def test_overwrite_in_the_middle_and_truncate(disk: PowerCutMount, root: Path) -> None:
    data = bytes(random.Random(1).randbytes(50_000))
    write(root / "f", data, sync=True)
    fsync_path(root)
    with open(root / "f", "r+b") as handle:
        handle.seek(4000)
        handle.write(b"A" * 300)  # straddles a page boundary
        handle.truncate(20_000)
        handle.truncate(30_000)  # the bytes in between read as zeros
        expected = data[:4000] + b"A" * 300 + data[4300:20_000] + bytes(10_000)
        handle.seek(0)
        assert handle.read() == expected
        os.fsync(handle.fileno())
        handle.truncate(10)  # not synced

    disk.cut()

    assert (root / "f").read_bytes() == expected


# --- names ----------------------------------------------------------------------------------


def test_create_without_folder_fsync_disappears(disk: PowerCutMount, root: Path) -> None:
    write(root / "new.mp4", b"data", sync=True)  # the data, not the name

    disk.cut()

    assert not (root / "new.mp4").exists()


def test_rename_without_folder_fsync_is_undone(disk: PowerCutMount, root: Path) -> None:
    write(root / "clip.part", b"recording", sync=True)
    fsync_path(root)
    (root / "clip.part").rename(root / "clip.mp4")
    assert os.listdir(root) == ["clip.mp4"]

    disk.cut()

    assert os.listdir(root) == ["clip.part"]
    assert (root / "clip.part").read_bytes() == b"recording"


def test_rename_across_folders_needs_both_folders_synced(disk: PowerCutMount, root: Path) -> None:
    (root / "a").mkdir()
    (root / "b").mkdir()
    write(root / "a" / "f", b"1", sync=True)
    for folder in (root / "a", root / "b", root):
        fsync_path(folder)
    (root / "a" / "f").rename(root / "b" / "f")
    fsync_path(root / "b")  # only the target folder

    disk.cut()

    # Per-folder durability: the new name is durable, the old one was never removed on disk.
    assert (root / "a" / "f").read_bytes() == b"1"
    assert (root / "b" / "f").read_bytes() == b"1"
    assert (root / "a" / "f").stat().st_ino == (root / "b" / "f").stat().st_ino


def test_unlink_without_folder_fsync_is_undone(disk: PowerCutMount, root: Path) -> None:
    write(root / "keep.mp4", b"video", sync=True)
    write(root / "gone.mp4", b"video", sync=True)
    fsync_path(root)
    (root / "keep.mp4").unlink()
    (root / "gone.mp4").unlink()
    fsync_path(root)
    write(root / "late.mp4", b"late", sync=True)
    (root / "keep.mp4").write_bytes(b"other")  # same name, new file: also not durable

    disk.cut()

    assert sorted(os.listdir(root)) == []
    write(root / "keep.mp4", b"video", sync=True)
    fsync_path(root)
    (root / "keep.mp4").unlink()

    disk.cut()

    assert (root / "keep.mp4").read_bytes() == b"video"


def test_mkdir_rmdir_link_symlink_and_chmod_follow_the_same_rules(
    disk: PowerCutMount, root: Path
) -> None:
    (root / "d").mkdir()
    write(root / "d" / "f", b"in d", sync=True)
    fsync_path(root / "d")  # d's entries, but d itself is not yet a durable name of root
    disk.cut()
    assert not (root / "d").exists()

    (root / "d").mkdir()
    (root / "gone").mkdir()
    write(root / "d" / "f", b"in d", sync=True)
    os.link(root / "d" / "f", root / "d" / "hard")
    os.symlink("d/f", root / "soft")
    fsync_path(root / "d")
    fsync_path(root)
    os.chmod(root / "d" / "f", 0o600)  # not durable: f is not fsynced afterwards
    (root / "gone").rmdir()
    os.unlink(root / "soft")
    disk.cut()

    assert sorted(os.listdir(root)) == ["d", "gone", "soft"]
    assert os.readlink(root / "soft") == "d/f"
    assert (root / "soft").read_bytes() == b"in d"
    assert (root / "d" / "hard").stat().st_ino == (root / "d" / "f").stat().st_ino
    assert (root / "d" / "f").stat().st_nlink == 2
    assert (root / "d" / "f").stat().st_mode & 0o777 == 0o644

    os.chmod(root / "d" / "f", 0o600)
    fsync_path(root / "d" / "f")
    disk.cut()
    assert (root / "d" / "f").stat().st_mode & 0o777 == 0o600


def test_rename_noreplace_refuses_an_existing_name(root: Path) -> None:
    write(root / "a", b"a")
    write(root / "b", b"b")
    with pytest.raises(OSError) as caught:
        renameat2(root / "a", root / "b", RENAME_NOREPLACE)
    assert caught.value.errno == errno.EEXIST
    renameat2(root / "a", root / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(root)) == ["b", "c"]


def test_an_unlinked_open_file_stays_usable_and_leaves_no_name(
    disk: PowerCutMount, root: Path
) -> None:
    write(root / "other", b"other", sync=True)
    fsync_path(root)
    with open(root / "f", "w+b") as handle:
        handle.write(b"before")
        os.unlink(root / "f")
        os.rename(root / "other", root / "f2")
        with open(root / "f2", "rb") as second:  # open: renamed over, it is hidden too
            write(root / "f3", b"3", sync=True)
            os.rename(root / "f3", root / "f2")
            handle.write(b" after")
            handle.truncate(9)
            os.fchmod(handle.fileno(), 0o600)
            os.fsync(handle.fileno())
            fsync_path(root)
            handle.seek(0)
            assert handle.read() == b"before af"
            assert second.read() == b"other"
            assert os.fstat(handle.fileno()).st_nlink == 0
            assert os.fstat(second.fileno()).st_nlink == 0
            assert sorted(os.listdir(root)) == ["f2"]

    disk.cut()

    assert sorted(os.listdir(root)) == ["f2"]
    assert (root / "f2").read_bytes() == b"3"


def test_inode_numbers_and_the_device_survive_a_cut(disk: PowerCutMount, root: Path) -> None:
    write(root / "f", b"x", sync=True)
    fsync_path(root)
    before = (root / "f").stat()

    disk.cut()

    after = (root / "f").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not disk.device_changed, disk.devices


def test_ordered_mode_commits_every_folder_at_any_fsync(tmp_path: Path) -> None:
    with mount(tmp_path / "backing", tmp_path / "mnt", mode="ordered") as disk:
        root = disk.mountpoint
        (root / "a").mkdir()
        write(root / "a" / "f", b"unsynced data")
        write(root / "old", b"old", sync=True)
        write(root / "new", b"new version")
        (root / "new").rename(root / "old")  # over an existing file: auto_da_alloc
        write(root / "other", b"x", sync=True)  # a journal commit

        disk.cut()

        assert sorted(os.listdir(root)) == ["a", "old", "other"]
        assert (root / "a" / "f").read_bytes() == b""
        assert (root / "old").read_bytes() == b"new version"


# --- what runs on it --------------------------------------------------------------------------


def test_mmap_of_a_shared_file_reaches_readers(root: Path) -> None:
    write(root / "shm", bytes(32768))
    with open(root / "shm", "r+b") as handle:
        mapped = mmap.mmap(handle.fileno(), 32768)
        mapped[100:105] = b"hello"
        mapped.flush()
        with open(root / "shm", "rb") as other:
            other.seek(100)
            assert other.read(5) == b"hello"
        mapped.close()


def test_posix_and_bsd_locks_conflict_between_processes(root: Path) -> None:
    write(root / "db", b"")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, sys
                a = open({str(root / "db")!r}, "r+b")
                fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
                b = open({str(root / "db")!r}, "r+b")
                fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with open(root / "db", "r+b") as handle:
            with pytest.raises(OSError) as posix:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(OSError) as bsd:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert posix.value.errno in (errno.EAGAIN, errno.EACCES)
        assert bsd.value.errno == errno.EWOULDBLOCK
    finally:
        holder.communicate(b"", timeout=30)


WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB)")
    count = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
    print(count, flush=True)
    while True:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t(payload) VALUES(randomblob(abs(random()) % 6000))")
        conn.execute("COMMIT")
        count += 1
        print(count, flush=True)   # acknowledged: the commit returned
    """
)


def test_sqlite_wal_full_survives_cuts_at_random_moments(disk: PowerCutMount, root: Path) -> None:
    rng = random.Random(12)
    database = root / "ledger.db"
    for _ in range(8):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE
        )
        assert writer.stdout is not None
        first = writer.stdout.readline()
        assert first, "the writer could not open the database"
        time.sleep(rng.uniform(0.05, 0.6))
        writer.kill()
        rest, _ = writer.communicate(timeout=30)
        acknowledged = int([first, *rest.splitlines()][-1])

        disk.cut()

        conn = sqlite3.connect(database)
        try:
            assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
            count = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        finally:
            conn.close()
        # The commit in flight when the writer was killed may or may not have made it.
        assert count in (acknowledged, acknowledged + 1), (count, acknowledged)


def test_sqlite_readers_see_a_writers_commits_through_the_shm(root: Path) -> None:
    database = str(root / "shared.db")
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t(x)")
    reader = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
            "print(c.execute('SELECT COUNT(*) FROM t').fetchone()[0])",
            database,
        ],
        capture_output=True,
        check=True,
    )
    assert reader.stdout == b"0\n"
    writer.execute("INSERT INTO t VALUES (1)")
    other = sqlite3.connect(database)
    assert other.execute("SELECT COUNT(*) FROM t").fetchone() == (1,)
    assert os.path.getsize(database + "-shm") >= 32768
    other.close()
    writer.close()
