"""``move_to`` on another file system: a full copy or none, never a partial file or ``(N)`` litter.

The target is a real small tmpfs (the tests run as root), so the copy runs
out of space for real.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    KiB,
    ingestd_env,
    ledger_rows,
    random_file,
    run_cli,
    run_once,
    sha256_file,
    write_config,
)
from structlog.testing import capture_logs

from ingestd.config.load import load_config
from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger
from ingestd.upload.after_upload import Belongings, housekeeping


def _mount_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB file system: too small for the 400,000-byte recording."""
    yield from _mount_tmpfs(tmp_path / "small", "300k")


@pytest.fixture
def roomy_fs(tmp_path: Path) -> Iterator[Path]:
    yield from _mount_tmpfs(tmp_path / "roomy", "4m")


async def test_a_full_target_leaves_no_partial_copy_and_no_litter(
    tmp_path: Path, server: FakeValtThread, export: Path, small_fs: Path
) -> None:
    big = export / "room" / "big.mp4"
    digest = random_file(big, 400_000)
    (export / "room" / "big.json").write_text('{"name": "Big"}')
    config_file = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": "move", "move_to": str(small_fs)},
    )
    result = run_once(config_file, "10s")  # the upload, and the move's first try
    assert result.returncode == 0
    assert '"after_upload.failed"' in result.stdout
    assert sorted(small_fs.rglob("*")) == []  # no partial copy, not even an empty folder
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        for _ in range(3):  # the retries that housekeeping makes every minute
            with capture_logs() as logs:
                config = load_config(config_file)
                belongs = Belongings(config.watch.done_marker, config.record.sidecar)
                await housekeeping(config.after_upload, belongs, ledger)
            assert [e["event"] for e in logs] == ["after_upload.failed"]
            assert sorted(small_fs.rglob("*")) == []
        [job] = await ledger.jobs_in([State.DONE])
        assert (job.after_done, job.final_path) == (0, None)
    finally:
        await ledger.close()
    assert sha256_file(big) == digest and (export / "room" / "big.json").exists()
    assert len(server.snapshot()["records"]) == 1


def test_a_move_across_file_systems_keeps_the_file_its_mode_and_time(
    tmp_path: Path, server: FakeValtThread, export: Path, roomy_fs: Path
) -> None:
    clip = export / "room" / "clip.mp4"
    digest = random_file(clip, 300 * KiB)
    (export / "room").chmod(0o750)
    clip.chmod(0o640)
    os.utime(clip, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (roomy_fs / "room").mkdir()
    (roomy_fs / "room" / "clip.mp4").write_bytes(b"an older clip of the same name")
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": "move", "move_to": str(roomy_fs / "archive")},
    )
    (roomy_fs / "archive" / "room").mkdir(parents=True)
    (roomy_fs / "archive" / "room" / "clip.mp4").write_bytes(b"taken")
    assert run_once(config, "10s").returncode == 0
    moved = roomy_fs / "archive" / "room" / "clip (1).mp4"
    assert sha256_file(moved) == digest
    info = moved.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_mtime_ns == 1_600_000_000_123_456_789
    assert (roomy_fs / "archive" / "room" / "clip.mp4").read_bytes() == b"taken"
    assert sorted(p.name for p in (roomy_fs / "archive" / "room").iterdir()) == [
        "clip (1).mp4",
        "clip.mp4",
    ]
    assert not clip.exists()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["final_path"], row["final_inode"], row["final_size"]) == (
        str(moved),
        info.st_ino,
        info.st_size,
    )


def test_a_crash_after_a_copy_across_file_systems_finds_the_copy_by_its_content(
    tmp_path: Path, server: FakeValtThread, export: Path, roomy_fs: Path
) -> None:
    """Across file systems the copy has an inode of its own: after a crash between the move
    and its commit, the copy in move_to (taken name and all) is recognised by size, mtime
    and the uploaded sha256, and a same-sized file of other bytes under the plain name is
    not mistaken for it."""
    clip = export / "room" / "clip.mp4"
    digest = random_file(clip, 200 * KiB)
    target = roomy_fs / "archive" / "room"
    target.mkdir(parents=True)
    impostor = target / "clip.mp4"
    random_file(impostor, 200 * KiB, seed=99)
    mtime = clip.stat().st_mtime_ns
    os.utime(impostor, ns=(mtime, mtime))  # same size and mtime, other bytes
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": "move", "move_to": str(roomy_fs / "archive")},
    )
    env = ingestd_env(INGESTD_FAILPOINTS="after_move")
    crashed = run_cli("run", "-c", str(config), "--once", "--max-wait", "10s", env=env)
    assert crashed.returncode == -signal.SIGKILL
    assert not clip.exists()
    assert run_once(config, "10s").returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    copy = target / "clip (1).mp4"
    assert (row["after_done"], row["final_path"], row["left_alone"]) == (1, str(copy), None)
    assert row["final_inode"] == copy.stat().st_ino
    assert sha256_file(copy) == digest
    assert sorted(p.name for p in target.iterdir()) == ["clip (1).mp4", "clip.mp4"]
