"""A file (or a whole share) that goes away and comes back.

A remount gives every file a new device number: with the same inode, size and
mtime that is no change at all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import (
    KiB,
    intake_for_tests,
    ledger_rows,
    random_file,
    run_cli,
    write_config,
)

from ingestd.disk.judged import snapshot
from ingestd.fake_valt import FakeValtThread
from ingestd.intake.waiting import as_snap
from ingestd.ledger.store import State

CHUNK = 256 * KiB


def _once(config: Path) -> str:
    result = run_cli("run", "-c", str(config), "--once", "--max-wait", "10s")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _new_device_number(ledger_path: Path) -> None:
    """What a remount looks like to the next scan: the ledger holds another device."""
    conn = sqlite3.connect(ledger_path, isolation_level=None)
    try:
        conn.execute("UPDATE jobs SET device=device+1")
    finally:
        conn.close()


def test_a_new_device_number_alone_creates_no_job(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 300 * KiB, seed=1)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, after_upload={"keep_for": "1h"}
    )
    _once(config)
    sent = server.snapshot()["upload_bytes_received"]
    _new_device_number(tmp_path / "ledger.db")
    output = _once(config)
    rows = ledger_rows(tmp_path / "ledger.db")
    assert [(r["state"], r["left_alone"]) for r in rows] == [("done", None)]
    assert server.snapshot()["upload_bytes_received"] == sent
    assert "file.discovered" not in output


async def test_a_new_device_number_alone_is_no_change_to_the_intake(
    tmp_path: Path, export: Path
) -> None:
    """Neither a scan nor a folder event makes a job of it, nor wakes a failed job."""
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        done, failed = export / "done.mp4", export / "failed.mp4"
        random_file(done, 1000, seed=1)
        random_file(failed, 1000, seed=2)
        assert await intake.scan("startup") == 2
        for job in await ledger.jobs_in([State.WAITING]):
            if job.path == str(done):
                await ledger.update(job.id, state=State.DONE, done_at=1.0)
            else:
                await ledger.fail(job, "upload_refused", "no")
        for job in await ledger.jobs_in(list(State)):
            await ledger.update(job.id, device=job.device + 1)
        assert await intake.scan("interval") == 0
        await intake.observe_path(done)
        await intake.observe_path(failed)
        jobs = {Path(job.path).name: job for job in await ledger.jobs_in(list(State))}
        assert {name: job.state for name, job in jobs.items()} == {
            "done.mp4": State.DONE,
            "failed.mp4": State.FAILED,
        }
        fresh = snapshot(done)
        assert fresh is not None and jobs["done.mp4"].snapshot != as_snap(fresh)
    finally:
        await ledger.close()
