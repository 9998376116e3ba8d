"""Test data on the real disk, written once and reused across rounds and runs.

Large files are built from a 64 MiB pool of random bytes (``os.urandom``),
taken at a different offset for every MiB and every file, with the file's name
and block number stamped on each MiB: nothing compresses, no two files (or
MiBs of one file) are equal, so no fingerprint or hash coincides, and writing
runs at disk speed instead of at the speed of a random generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
POOL_SIZE = 64 * MiB
BLOCK = MiB
NON_DISK_FS = {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs"}


def default_dir() -> Path:
    return Path(os.environ.get("INGESTD_BENCH_DIR", "/var/tmp/ingestd-bench"))


def filesystem_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) holding ``path``, from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best = ("/", "unknown")
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            mount_point = left.split()[4].replace("\\040", " ")
            fstype = right.split()[0]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fstype)
    return best


class Pool:
    """64 MiB of random bytes; ``block(tag, n)`` is one distinct MiB for file ``tag``."""

    def __init__(self) -> None:
        self._pool = memoryview(os.urandom(POOL_SIZE + BLOCK))

    def block(self, tag: str, number: int, size: int = BLOCK) -> bytes:
        seed = int.from_bytes(hashlib.blake2b(f"{tag}:{number}".encode(), digest_size=8).digest())
        offset = (seed % (POOL_SIZE // 4096)) * 4096
        stamp = f"{tag}:{number}:".encode()
        return stamp + bytes(self._pool[offset + len(stamp) : offset + size])


class DataDir:
    """The bench's cached data under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool: Pool | None = None
        self._meta_path = root / "meta.json"
        self.meta: dict[str, dict[str, object]] = {}
        if self._meta_path.exists():
            self.meta = json.loads(self._meta_path.read_text())
        self.written = 0

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = Pool()
        return self._pool

    def _save(self) -> None:
        # Another bench process may have written data meanwhile: keep its entries too.
        if self._meta_path.exists():
            self.meta = {**json.loads(self._meta_path.read_text()), **self.meta}
        self._meta_path.write_text(json.dumps(self.meta, indent=1))

    def _cached(self, key: str, path: Path, size: int | None = None) -> bool:
        entry = self.meta.get(key)
        if entry is None or not path.exists():
            return False
        return size is None or path.stat().st_size == size

    def large_file(self, name: str, size: int) -> tuple[Path, str]:
        """``name`` of ``size`` bytes (written now unless cached); returns (path, sha256)."""
        path = self.root / "large" / name
        key = f"large/{name}"
        if not self._cached(key, path, size):
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(path, "wb") as handle:
                for number in range(0, size // BLOCK):
                    block = self.pool.block(name, number)
                    digest.update(block)
                    handle.write(block)
                os.fsync(handle.fileno())
            self.written += size
            self.meta[key] = {"size": size, "sha256": digest.hexdigest()}
            self._save()
        return path, str(self.meta[key]["sha256"])

    def small_files(self, count: int, size: int) -> Path:
        """A folder of ``count`` distinct files of ``size`` bytes each."""
        folder = self.root / f"small-{count}x{size}"
        key = f"small/{count}x{size}"
        if not self._cached(key, folder):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for index in range(count):
                data = self.pool.block(f"small{index}", 0, size)
                (folder / f"clip-{index:05d}.ts").write_bytes(data)
            os.sync()
            self.written += count * size
            self.meta[key] = {"count": count, "size": size}
            self._save()
        return folder

    def backlog(self, count: int) -> tuple[Path, Path]:
        """``count`` small files and a ledger (schema of today) holding each as ``done``.

        Returns (folder, ledger); the caller copies the ledger before using it.
        """
        folder = self.root / f"backlog-{count}"
        ledger = self.root / f"backlog-{count}.db"
        key = f"backlog/{count}"
        if not self._cached(key, folder) or not ledger.exists():
            shutil.rmtree(folder, ignore_errors=True)
            for stale in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
                stale.unlink(missing_ok=True)
            per_folder = 1000
            for index in range(count):
                sub = folder / f"day-{index // per_folder:03d}"
                if index % per_folder == 0:
                    sub.mkdir(parents=True)
                (sub / f"clip-{index:06d}.ts").write_bytes(f"recording {index}\n".encode())
            _build_done_ledger(folder, ledger)
            os.sync()
            self.meta[key] = {"count": count}
            self._save()
        return folder, ledger

    def done_files(self, count: int, per_folder: int = 1000) -> tuple[Path, Path]:
        """``count`` files of a few bytes, ``per_folder`` a folder, and a ledger holding
        each as a finished upload leaves it (``_build_done_rows``). Returns (folder,
        ledger); the caller copies the ledger before using it."""
        folder = self.root / f"done-{count}"
        ledger = self.root / f"done-{count}.db"
        key = f"done/{count}"
        if not self._cached(key, folder) or not ledger.exists():
            shutil.rmtree(folder, ignore_errors=True)
            for stale in (ledger, Path(f"{ledger}-wal"), Path(f"{ledger}-shm")):
                stale.unlink(missing_ok=True)
            _build_done_rows(folder, ledger, count, per_folder)
            os.sync()
            self.meta[key] = {"count": count, "per_folder": per_folder}
            self._save()
        return folder, ledger


def _create_ledger(ledger: Path) -> None:
    """An empty ledger of today's schema."""
    import asyncio

    from ingestd.ledger.store import SqliteLedger

    async def create() -> None:
        opened = await SqliteLedger.open(ledger)
        await opened.close()

    asyncio.run(create())


def _build_done_rows(folder: Path, ledger: Path, count: int, per_folder: int) -> None:
    """Write the files a folder at a time, and insert their jobs in bulk as a done upload
    with ``after_upload.action: keep`` leaves them: state done, after_done 1, the sha256,
    the record's ids and name, the fingerprint (intake/identity.py), the timestamps."""
    _create_ledger(ledger)
    conn = sqlite3.connect(ledger)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # built once; fsynced at the end
        started = time.time()
        for first in range(0, count, per_folder):
            sub = folder / f"day-{first // per_folder:04d}"
            sub.mkdir(parents=True)
            rows = []
            for index in range(first, min(count, first + per_folder)):
                path = sub / f"clip-{index:07d}.ts"
                data = f"recording {index}\n".encode()
                path.write_bytes(data)
                info = path.stat()
                done = started - (count - index) * 0.001  # one a millisecond, in path order
                rows.append(
                    (
                        str(path), str(folder), info.st_size, info.st_mtime_ns, info.st_ino,
                        info.st_dev, path.stem, f"rec-{index}", f"vid-{index}", info.st_size,
                        hashlib.sha256(data).hexdigest(),
                        "v1:" + hashlib.sha256(str(len(data)).encode() + data).hexdigest(),
                        str(path), done - 2, done - 1, done - 0.5, done, done,
                    )
                )  # fmt: skip
            with conn:
                conn.executemany(
                    "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
                    "record_name, record_id, video_id, bytes_acked, sha256, fingerprint, "
                    "final_path, discovered_at, upload_started_at, uploaded_at, done_at, "
                    "updated_at, after_done) "
                    "VALUES(?,?,'done',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                    rows,
                )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _build_done_ledger(folder: Path, ledger: Path) -> None:
    """A ledger as the daemon leaves it after uploading every file under ``folder``."""
    _create_ledger(ledger)
    now = time.time()
    rows = []
    for number, path in enumerate(sorted(folder.rglob("*.ts")), start=1):
        info = path.stat()
        rows.append(
            (
                str(path),
                str(folder),
                info.st_size,
                info.st_mtime_ns,
                info.st_ino,
                info.st_dev,
                f"{path.stem}",
                f"rec-{number}",
                f"vid-{number}",
                info.st_size,
                "0" * 64,
                now,
                now,
                now,
                now,
                now,
            )
        )
    conn = sqlite3.connect(ledger)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, record_name, "
                "record_id, video_id, bytes_acked, sha256, discovered_at, upload_started_at, "
                "uploaded_at, done_at, updated_at, after_done) "
                "VALUES(?,?,'done',?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                rows,
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def copy_ledger(source: Path, target: Path) -> None:
    """A consistent copy of a closed ledger (its WAL was checkpointed when it was built)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
