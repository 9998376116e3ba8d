"""Identity: a copy is not uploaded twice; a file that changes mid-upload is uploaded as it ends."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from conftest import (
    KiB,
    MiB,
    assert_no_event,
    job_states,
    ledger_rows,
    log_events,
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

CHUNK = 256 * KiB


def test_same_content_under_another_name_is_skipped(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "take 1.mp4", 9 * MiB, seed=7)  # larger than head + tail
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    assert run_once(config, "10s").returncode == 0
    assert len(server.snapshot()["records"]) == 1
    (export / "copies").mkdir()
    shutil.copyfile(export / "take 1.mp4", export / "copies" / "take 1 (copy).mp4")
    # Same head, tail and size, different middle: not a duplicate.
    data = bytearray((export / "take 1.mp4").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (export / "take 1 edited.mp4").write_bytes(bytes(data))
    assert run_once(config, "10s").returncode == 0
    rows = {Path(r["path"]).name: r for r in ledger_rows(tmp_path / "ledger.db")}
    assert rows["take 1 (copy).mp4"]["state"] == "skipped"
    assert rows["take 1 edited.mp4"]["state"] == "done"
    assert len(server.snapshot()["records"]) == 2
    log = run_once(config, "10m").stdout
    assert_no_event(log, "file.duplicate")  # nothing new: decided once, remembered
    uploads = server.snapshot()["upload_bytes_received"]
    assert uploads == 2 * 9 * MiB


def test_duplicate_log_names_the_earlier_record(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 300 * KiB, seed=1)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    assert run_once(config, "10s").returncode == 0
    record_id = server.snapshot()["records"][0]["id"]
    shutil.copyfile(export / "a.mp4", export / "b.mp4")
    result = run_once(config, "10s")
    assert result.returncode == 0
    [event] = [e for e in _json_lines(result.stdout) if e["event"] == "file.duplicate"]
    assert event["record_id"] == record_id
    assert event["earlier_path"].endswith("a.mp4")


def _json_lines(text: str) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_replaced_after_done_is_a_new_job(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 300 * KiB, seed=1)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    assert run_once(config, "10s").returncode == 0
    time.sleep(0.01)
    second = random_file(export / "clip.mp4", 400 * KiB, seed=2)
    assert run_once(config, "10s").returncode == 0
    rows = ledger_rows(tmp_path / "ledger.db")
    assert [r["state"] for r in rows] == ["done", "done"]
    assert rows[1]["sha256"] == second
    assert len(server.snapshot()["records"]) == 2
    # The same content written again under the same name: recognised, not uploaded again.
    (export / "clip.mp4").write_bytes((export / "clip.mp4").read_bytes())
    os.utime(export / "clip.mp4", (time.time() + 5, time.time() + 5))
    assert run_once(config, "10s").returncode == 0
    assert [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done", "done", "skipped"]
    assert len(server.snapshot()["records"]) == 2


def _slow_upload(tmp_path: Path, server: FakeValtThread, export: Path) -> tuple[Path, Path]:
    random_file(export / "live.mp4", 40 * CHUNK, seed=3)
    server.set_faults(slow_rate=1.0, slow_seconds=0.1)
    config = write_config(tmp_path, server.url, upload={"workers": 1}, watch={"settle": "0.5s"})
    log = tmp_path / "daemon.log"
    return config, log


def test_a_file_that_grows_during_upload_is_uploaded_as_it_ends(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config, log = _slow_upload(tmp_path, server, export)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 4 * CHUNK, timeout=30)
        with open(export / "live.mp4", "ab") as handle:
            handle.write(os.urandom(3 * CHUNK))
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: job_states(tmp_path / "ledger.db").get("live.mp4") == "done", timeout=30)
    finally:
        assert stop_process(daemon) == 0
    state = server.snapshot()
    assert len(state["records"]) == 1 and len(state["deleted"]) == 1
    assert server_videos(server)["live"]["sha256"] == sha256_file(export / "live.mp4")
    assert any(e["event"] == "file.changed" for e in log_events(log))


def test_a_file_rewritten_or_truncated_during_upload(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config, log = _slow_upload(tmp_path, server, export)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 3 * CHUNK, timeout=30)
        random_file(export / "live.mp4", 40 * CHUNK, seed=99)  # same size, new content
        wait_for(lambda: len(server.snapshot()["deleted"]) == 1, timeout=30)
        first = server.snapshot()["deleted"][0]

        def second_upload_under_way() -> bool:
            [row] = ledger_rows(tmp_path / "ledger.db")
            return row["record_id"] not in (None, first) and row["bytes_acked"] >= 4 * CHUNK

        wait_for(second_upload_under_way, timeout=30)
        os.truncate(export / "live.mp4", 10 * CHUNK)  # and now it shrinks
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: job_states(tmp_path / "ledger.db").get("live.mp4") == "done", timeout=30)
    finally:
        assert stop_process(daemon) == 0
    state = server.snapshot()
    assert len(state["records"]) == 1 and len(state["deleted"]) == 2
    video = server_videos(server)["live"]
    assert video["sha256"] == sha256_file(export / "live.mp4")
    assert video["received"] == 10 * CHUNK


def test_a_file_deleted_during_upload_fails_and_its_record_goes(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config, log = _slow_upload(tmp_path, server, export)
    random_file(export / "other.mp4", 2 * CHUNK, seed=5)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 3 * CHUNK, timeout=30)
        (export / "live.mp4").unlink()
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: job_states(tmp_path / "ledger.db").get("other.mp4") == "done", timeout=30)
        wait_for(lambda: server.snapshot()["deleted"], timeout=10)
    finally:
        assert stop_process(daemon) == 0
    rows = {Path(r["path"]).name: r for r in ledger_rows(tmp_path / "ledger.db")}
    assert (rows["live.mp4"]["state"], rows["live.mp4"]["fail_reason"]) == (
        "failed",
        "source_missing",
    )
    assert list(server_videos(server)) == ["other"]
