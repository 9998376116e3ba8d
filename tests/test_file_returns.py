"""A file (or a whole share) that goes away and comes back.

A file renamed out of the watch folder mid-upload fails its job ``source_missing``;
back under its name, the same job takes it up again. A remount gives every file a
new device number: with the same inode, size and mtime that is no change at all.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from conftest import (
    KiB,
    intake_for_tests,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    server_videos,
    sha256_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from ledger_support import set_state

from ingestd.disk.judged import snapshot
from ingestd.fake_valt import FakeValtThread
from ingestd.intake.waiting import as_snap
from ingestd.ledger.model import State

CHUNK = 256 * KiB


def _once(config: Path) -> str:
    result = run_cli("run", "-c", str(config), "--once", "--max-wait", "10s")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_file_renamed_away_mid_upload_and_back_is_uploaded_once(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    video = export / "room" / "live.mp4"
    random_file(video, 40 * CHUNK, seed=3)
    aside = tmp_path / "aside"
    aside.mkdir()
    server.set_faults(slow_rate=1.0, slow_seconds=0.1)
    config = write_config(tmp_path, server.url, upload={"workers": 1}, watch={"settle": "0.3s"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 3 * CHUNK, timeout=30)
        os.rename(video, aside / "live.mp4")  # the same inode, size and mtime throughout

        def failed_as_missing() -> bool:
            [row] = ledger_rows(tmp_path / "ledger.db")
            return (row["state"], row["fail_reason"]) == ("failed", "source_missing")

        wait_for(failed_as_missing, timeout=30)
        os.rename(aside / "live.mp4", video)
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done"])
    finally:
        assert stop_process(daemon) == 0
    [row] = ledger_rows(tmp_path / "ledger.db")  # the same job, not a new one
    assert (row["id"], row["fail_reason"]) == (1, None)
    state = server.snapshot()
    assert len(state["records"]) == 1 and len(state["deleted"]) == 1  # the partial one
    assert server_videos(server)["live"]["sha256"] == sha256_file(video)
    [back] = [e for e in log_events(log) if e["event"] == "file.returned"]
    assert back["job_id"] == 1


async def test_only_a_job_failed_as_source_missing_is_taken_up_again(
    tmp_path: Path, export: Path
) -> None:
    """A job whose file is still there but failed for another reason stays failed
    (until ``ingestd retry``); the returned one goes back to waiting, attempts reset."""
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        random_file(export / "gone.mp4", 1000, seed=1)
        random_file(export / "refused.mp4", 1000, seed=2)
        random_file(export / "event.mp4", 1000, seed=3)
        assert await intake.scan("startup") == 3
        jobs = {Path(job.path).name: job for job in await ledger.jobs_in([State.WAITING])}
        for name, reason in (
            ("gone.mp4", "source_missing"),
            ("refused.mp4", "upload_refused"),
            ("event.mp4", "source_missing"),
        ):
            await set_state(ledger, jobs[name].id, State.FAILED, attempts=2, fail_reason=reason)
        await intake.observe_path(export / "event.mp4")  # a folder event: the same
        assert await intake.scan("interval") == 1
        after = {Path(job.path).name: job for job in await ledger.jobs_in(list(State))}
        assert {name: job.state for name, job in after.items()} == {
            "gone.mp4": State.WAITING,
            "refused.mp4": State.FAILED,
            "event.mp4": State.WAITING,
        }
        for name in ("gone.mp4", "event.mp4"):
            job = after[name]
            assert (job.id, job.attempts, job.fail_reason) == (jobs[name].id, 0, None)
        assert await intake.scan("interval") == 0  # taken up once
    finally:
        await ledger.close()


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
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"keep_for": "1h"},
        log={"level": "debug"},  # file.discovered is at debug
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
                await set_state(ledger, job.id, State.DONE, done_at=1.0)
            else:
                await set_state(ledger, job.id, State.FAILED, fail_reason="upload_refused")
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
