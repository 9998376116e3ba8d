"""Crashes at every step of a job, then a new run: resume, one record, identical bytes.

The process kills itself with SIGKILL at a named failpoint (or is killed from
outside at a random moment), exactly as a power cut would stop it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    USERNAME,
    KiB,
    MiB,
    assert_no_event,
    ingestd_env,
    ledger_rows,
    random_file,
    run_cli,
    run_once,
    server_videos,
    sha256_file,
    start_daemon,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread

CHUNK = 256 * KiB


def _config(tmp_path: Path, server: FakeValtThread) -> Path:
    return write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "chunk_size": "256KiB"},
        watch={"settle": "0.1s"},
    )


@pytest.mark.parametrize(
    ("failpoint", "acked", "max_resent"),
    [
        # The chunk after the committed one may have been answered meanwhile.
        ("after_chunk_committed:3", {3 * CHUNK}, CHUNK),
        # The server had one chunk more than the ledger, or two while a commit lagged.
        ("after_chunk_response:3", {CHUNK, 2 * CHUNK}, 2 * CHUNK),
    ],
)
def test_kill_mid_upload_resumes_from_acknowledged_chunk(
    tmp_path: Path,
    server: FakeValtThread,
    export: Path,
    failpoint: str,
    acked: set[int],
    max_resent: int,
) -> None:
    size = 10 * CHUNK + 1234
    digest = random_file(export / "interview.mp4", size)
    config = _config(tmp_path, server)

    assert run_once(config, INGESTD_FAILPOINTS=failpoint).returncode == -signal.SIGKILL
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "uploading"
    assert row["bytes_acked"] in acked

    assert run_once(config).returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "done"
    assert row["sha256"] == digest == sha256_file(export / "interview.mp4")
    videos = server_videos(server)
    assert list(videos) == ["interview"]
    assert videos["interview"]["sha256"] == digest
    resent = server.snapshot()["upload_bytes_received"] - size
    assert 0 <= resent <= max_resent


def test_random_kill_resends_at_most_two_chunks(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """SIGKILL from outside while chunks are moving: at most two chunks are sent twice (the
    one on the wire, and the one before it while its commit lagged)."""
    size = 40 * CHUNK
    digest = random_file(export / "long take.mp4", size)
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    config = _config(tmp_path, server)
    process = start_daemon(config, tmp_path / "daemon.log", None, "--once")
    wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 10 * CHUNK, timeout=30)
    process.send_signal(signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL
    acked = ledger_rows(tmp_path / "ledger.db")[0]["bytes_acked"]
    assert 0 < acked < size

    server.set_faults(slow_rate=0.0)
    assert run_once(config).returncode == 0
    assert server_videos(server)["long take"]["sha256"] == digest
    assert ledger_rows(tmp_path / "ledger.db")[0]["sha256"] == digest
    resent = server.snapshot()["upload_bytes_received"] - size
    assert 0 <= resent <= 2 * CHUNK


@pytest.mark.parametrize(
    ("failpoint", "acked", "resent"),
    [
        # Chunk 3 answered while chunk 2's commit is still on its way: the ledger is a
        # chunk further behind than the server, and the resume repeats chunks 2 and 3.
        ("after_chunk_response:3", CHUNK, 2 * CHUNK),
        # Chunk 2's commit lands after chunk 3 was answered: chunk 3 is repeated.
        ("after_chunk_committed:2", 2 * CHUNK, CHUNK),
    ],
)
def test_a_commit_lagging_behind_the_next_chunk_costs_at_most_two_chunks(
    tmp_path: Path, server: FakeValtThread, export: Path, failpoint: str, acked: int, resent: int
) -> None:
    """Chunk N's bytes_acked is committed while chunk N+1 is on the wire (design.md); with
    commits slower than a chunk, a kill finds the ledger two chunks behind the server at
    worst, and the resume's repeats are harmless: one record, identical bytes."""
    size = 10 * CHUNK + 1234
    digest = random_file(export / "interview.mp4", size)
    config = _config(tmp_path, server)
    slow = [sys.executable, str(Path(__file__).with_name("slow_acks.py"))]
    args = ["run", "-c", str(config), "--once", "--max-wait", "20s"]
    env = ingestd_env(INGESTD_FAILPOINTS=failpoint, SLOW_ACKS="1.0")
    killed = subprocess.run(slow + args, env=env, capture_output=True, text=True, timeout=90)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["bytes_acked"]) == ("uploading", acked)
    assert server.snapshot()["upload_bytes_received"] == 3 * CHUNK  # the server is ahead

    assert run_once(config).returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["sha256"]) == ("done", digest)
    assert server_videos(server)["interview"]["sha256"] == digest
    state = server.snapshot()
    assert (state["upload_bytes_received"] - size, state["chunk_repeats"]) == (
        resent,
        resent // CHUNK,
    )
    assert state["deleted"] == []  # the same record all along


def test_kill_after_create_answer_leaves_one_record_and_spares_other_machines(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """The create-upload answer is lost in a crash: reconciliation, not a second record."""
    random_file(export / "Room 3.mp4", 3 * CHUNK)
    # Same name, created just now by another capture machine's account...
    other = server.seed_record("Room 3", author="capture-pc-7")
    # ...and by our own account, but long before this file's upload began.
    old = server.seed_record("Room 3", author=USERNAME, created=int(time.time()) - 3 * 3600)
    config = _config(tmp_path, server)

    killed = run_once(config, INGESTD_FAILPOINTS="after_create_response")

    assert killed.returncode == -signal.SIGKILL
    assert ledger_rows(tmp_path / "ledger.db")[0]["state"] == "creating"
    assert len(server.snapshot()["records"]) == 3  # ours, unknown to the ledger

    assert run_once(config).returncode == 0
    state = server.snapshot()
    records = {r["id"]: r for r in state["records"]}
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "done"
    assert set(records) == {other, old, row["record_id"]}
    assert other not in state["deleted"] and old not in state["deleted"]
    assert len(state["deleted"]) == 1  # the empty record the crash left behind
    assert records[row["record_id"]]["videos"][0]["sha256"] == row["sha256"]


def test_two_empty_candidates_fail_as_ambiguous(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "Room 4.mp4", 2 * CHUNK)
    config = _config(tmp_path, server)
    killed = run_once(config, INGESTD_FAILPOINTS="after_create_response")
    assert killed.returncode == -signal.SIGKILL
    server.seed_record("Room 4", author=USERNAME)  # a second empty one of ours appears
    result = run_once(config, "10s")
    assert result.returncode == 1
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["fail_reason"]) == ("failed", "ambiguous_record")
    assert "ambiguous_record" in result.stderr
    assert len(server.snapshot()["records"]) == 2  # nothing deleted, nothing added


@pytest.mark.parametrize("failpoint", ["before_create", "after_record_committed"])
def test_kill_around_record_creation(
    tmp_path: Path, server: FakeValtThread, export: Path, failpoint: str
) -> None:
    digest = random_file(export / "clip.mp4", 3 * CHUNK + 7)
    config = _config(tmp_path, server)
    assert run_once(config, INGESTD_FAILPOINTS=failpoint).returncode == -signal.SIGKILL
    assert run_once(config).returncode == 0
    videos = server_videos(server)
    assert list(videos) == ["clip"]
    assert videos["clip"]["sha256"] == digest
    assert server.snapshot()["deleted"] == []


@pytest.mark.parametrize("failpoint", ["in_confirming", "after_ready"])
def test_kill_while_confirming_does_not_upload_again(
    tmp_path: Path, server: FakeValtThread, export: Path, failpoint: str
) -> None:
    size = 3 * CHUNK
    digest = random_file(export / "clip.mp4", size)
    config = _config(tmp_path, server)
    assert run_once(config, INGESTD_FAILPOINTS=failpoint).returncode == -signal.SIGKILL
    assert ledger_rows(tmp_path / "ledger.db")[0]["state"] == "confirming"
    assert run_once(config).returncode == 0
    assert server.snapshot()["upload_bytes_received"] == size
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["sha256"]) == ("done", digest)
    assert len(server_videos(server)) == 1


def test_done_file_is_not_uploaded_again(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", MiB)
    config = _config(tmp_path, server)
    assert run_once(config).returncode == 0
    assert run_once(config).returncode == 0
    assert len(server.snapshot()["records"]) == 1
    assert server.snapshot()["upload_bytes_received"] == MiB


def test_strict_search_spares_our_accounts_finished_record(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """Search results without videos or author (as documented): emptiness is proven by GET.

    Another machine under the same account finished a same-named record; the crash after
    the create answer left our empty one. Only ours is deleted; the file has one record.
    """
    random_file(export / "Interview room 1.mp4", 2 * CHUNK)
    server.set_faults(strict_search=True)
    finished = server.seed_record("Interview room 1", author=USERNAME, with_video=True)
    config = _config(tmp_path, server)

    killed = run_once(config, INGESTD_FAILPOINTS="after_create_response")

    assert killed.returncode == -signal.SIGKILL
    [ours_empty] = [r["id"] for r in server.snapshot()["records"] if r["id"] != finished]

    result = run_once(config, "20s")
    assert result.returncode == 0, result.stderr[-3000:]
    state = server.snapshot()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "done"
    assert state["deleted"] == [ours_empty]
    assert {r["id"] for r in state["records"]} == {finished, row["record_id"]}
    assert_no_event(result.stdout, "record.orphan_suspected")


def test_unprovable_record_is_left_alone_and_listed(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A record whose emptiness GET does not show is never deleted: noted, and in status."""
    random_file(export / "Room 9.mp4", CHUNK)
    config = _config(tmp_path, server)
    killed = run_once(config, INGESTD_FAILPOINTS="after_create_response")
    assert killed.returncode == -signal.SIGKILL
    [leftover] = [r["id"] for r in server.snapshot()["records"]]
    # A server whose GET records/{id} does not say "videos" (and a strict search).
    server.set_faults(strict_search=True, omit_nulls=True)

    result = run_once(config, "20s")
    assert result.returncode == 0, result.stderr[-3000:]
    state = server.snapshot()
    assert state["deleted"] == []
    assert leftover in {r["id"] for r in state["records"]}
    assert len(state["records"]) == 2  # the leftover, and the file's record
    events = [line for line in result.stdout.splitlines() if "record.orphan_suspected" in line]
    assert len(events) == 1 and leftover in events[0]
    status = run_cli("status", "-c", str(config))
    assert leftover in status.stdout and "left alone" in status.stdout
    status_json = run_cli("status", "--json", "-c", str(config))
    assert leftover in status_json.stdout
