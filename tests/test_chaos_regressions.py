"""Bugs the crash campaign (chaos/campaign.py) found, each pinned down by one small test."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    KiB,
    ledger_rows,
    random_file,
    run_once,
    server_videos,
    sha256_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


@pytest.mark.parametrize("answered", [1, 2])
def test_resume_cuts_chunks_as_before_when_chunk_size_changed(
    tmp_path: Path, server: FakeValtThread, export: Path, answered: int
) -> None:
    """A crash leaves the server one chunk ahead of the ledger (two, while the previous
    chunk's commit lagged: upload/acks.py); the restart has another ``upload.chunk_size``.
    The resume must cut the chunks where the record's first chunks were cut, so the
    server's copy is a harmless repeat. It used to send a chunk that overlapped the bytes
    held: refused, and the job failed (``upload_refused``, at byte 0) or its record was
    deleted and the upload began again (later)."""
    chunk = 64 * KiB
    size = 5 * chunk + 123
    digest = random_file(export / "clip.mp4", size)
    settle = {"settle": "0.1s"}
    config = write_config(
        tmp_path, server.url, upload={"workers": 1, "chunk_size": "64KiB"}, watch=settle
    )
    assert (
        run_once(config, INGESTD_FAILPOINTS=f"after_chunk_response:{answered}").returncode
        == -signal.SIGKILL
    )
    [row] = ledger_rows(tmp_path / "ledger.db")
    # Chunk answered-1's commit may still have been on its way when chunk answered was.
    acked = {max(0, answered - 2) * chunk, (answered - 1) * chunk}
    assert row["state"] == "uploading" and row["bytes_acked"] in acked, row
    held, row_acked = answered * chunk, row["bytes_acked"]  # the server is ahead by this

    config = write_config(
        tmp_path, server.url, upload={"workers": 1, "chunk_size": "1MiB"}, watch=settle
    )
    assert run_once(config).returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["sha256"]) == ("done", digest)
    videos = server_videos(server)
    assert list(videos) == ["clip"]
    assert videos["clip"]["sha256"] == digest
    state = server.snapshot()
    assert state["deleted"] == []  # the same record all along
    # Only what the server held beyond the ledger went again.
    assert state["upload_bytes_received"] - size == held - row_acked


def _seed_with_faults_at(requests: set[int], rate: float, draws: int = 30) -> int:
    """A fault seed whose dice strike exactly the given requests (1-based) of the first
    ``draws``: with one kind of fault switched on, every request rolls exactly one die."""
    wanted = [n in requests for n in range(1, draws + 1)]
    for seed in range(200_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in range(draws)] == wanted:
            return seed
    raise AssertionError("no such seed")


def test_partial_record_is_deleted_before_the_next_one_is_made(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A file changes while its upload is half done: its partial record must be gone before
    a record for the new version is made, even when the first delete fails. The deletion
    used to be left to the background sweeper, which waits before trying again; the
    worker made the new record meanwhile, and for a while the file had two."""
    clip = export / "clip.mp4"
    random_file(clip, 3 * 64 * KiB)
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "chunk_size": "64KiB", "backoff_initial": "1s", "backoff_max": "2s"},
        watch={"settle": "0.1s"},
    )
    killed = run_once(config, INGESTD_FAILPOINTS="after_record_committed")
    assert killed.returncode == -signal.SIGKILL
    [partial] = server.snapshot()["records"]
    with open(clip, "ab") as handle:  # the capture program adds to it while the daemon is down
        handle.write(b"more")
    # The next run logs in, then deletes the partial record (refused once with a 500).
    server.set_faults(fail_rate=0.02, seed=_seed_with_faults_at({2}, 0.02))
    log_start = len(server.call(lambda fake: list(fake.request_log)))

    assert run_once(config).returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["sha256"]) == ("done", sha256_file(clip))
    assert [r["id"] for r in server.snapshot()["records"]] == [row["record_id"]]
    log = server.call(lambda fake: list(fake.request_log))[log_start:]
    ok = [(entry.method, entry.path) for entry in log if entry.status == 200]
    assert ok.index(("POST", f"/api/v3/records/{partial['id']}/delete")) < ok.index(
        ("POST", "/api/v3/records/create-upload")
    )


def test_a_stale_confirmation_does_not_overwrite_a_changed_file(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """The file changes while the confirmer waits for the server's answer about its record.
    The change sends the job back (its record deleted, a new one made); the late answer
    (404 for the deleted record, or "ready") is about the old record and must be ignored.
    The confirmer used to act on it: "record vanished" dropped the job's *new* record
    without deleting it (two records for one file), "ready" marked the job done with the
    new version never sent."""
    clip = export / "clip.mp4"
    random_file(clip, 1000)
    # Requests: login, create-upload, the chunk, then the first GET of the record: slow.
    server.set_faults(
        slow_rate=0.02, slow_seconds=2.5, seed=_seed_with_faults_at({4}, 0.02, draws=40)
    )
    config = write_config(
        tmp_path,
        server.url,
        valt={"timeout": "10s"},
        upload={"workers": 1},
        watch={"settle": "0.1s", "rescan_interval": "1s"},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _state(tmp_path) == "confirming", timeout=20, interval=0.01)
        time.sleep(0.3)  # the GET is under way
        with open(clip, "ab") as handle:
            handle.write(b"a late addition")
        digest = sha256_file(clip)
        wait_for(lambda: _done_with(tmp_path, digest), timeout=30)
        time.sleep(3)  # the slow answer has come and gone
    finally:
        assert stop_process(daemon) == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["sha256"]) == ("done", digest)
    records = server.snapshot()["records"]
    assert [r["id"] for r in records] == [row["record_id"]]
    assert records[0]["videos"][0]["sha256"] == digest


def _state(tmp_path: Path) -> str | None:
    rows = ledger_rows(tmp_path / "ledger.db")
    return rows[0]["state"] if rows else None


def _done_with(tmp_path: Path, digest: str) -> bool:
    rows = ledger_rows(tmp_path / "ledger.db")
    return bool(rows) and rows[0]["state"] == "done" and rows[0]["sha256"] == digest
