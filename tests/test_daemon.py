"""The daemon as a real process: watching, rescans, signals, and live control."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (
    PASSWORD,
    KiB,
    MiB,
    ingestd_env,
    job_states,
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

from ingestd.fake_valt import FakeValtThread

CHUNK = 256 * KiB
SLOW_WRITER = """
import os, sys, time
with open(sys.argv[1], "wb") as f:
    for n in range(15):
        time.sleep(0.2 if n else 0)
        f.write(os.urandom(64 * 1024))
        f.flush()
print(time.time())
"""


def _done(tmp_path: Path, count: int) -> bool:
    rows = ledger_rows(tmp_path / "ledger.db") if (tmp_path / "ledger.db").exists() else []
    return sum(row["state"] == "done" for row in rows) >= count


def _queued(tmp_path: Path) -> bool:
    """Some job left ``waiting``: its file was found finished and queued for upload."""
    rows = ledger_rows(tmp_path / "ledger.db") if (tmp_path / "ledger.db").exists() else []
    return any(row["state"] != "waiting" for row in rows)


def _event_time(events: list[dict[str, object]], event_name: str, **match: object) -> float:
    from datetime import datetime

    for event in events:
        if event.get("event") == event_name and all(event.get(k) == v for k, v in match.items()):
            stamp = str(event["timestamp"]).replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    raise AssertionError(f"no {event_name} event matching {match}")


def test_daemon_uploads_old_and_new_files_only_once_finished(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    before = random_file(export / "before start.mp4", MiB, seed=1)
    # record.created (debug) tells when the upload of the slow file began.
    config = write_config(tmp_path, server.url, watch={"settle": "1s"}, log={"level": "debug"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _done(tmp_path, 1), timeout=30)
        # A capture program writes slowly, holding the file open, for about 3 s.
        (export / "room 2").mkdir()
        writer = subprocess.run(
            [sys.executable, "-c", SLOW_WRITER, str(export / "room 2" / "slow.mp4")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        closed_at = float(writer.stdout.strip())
        wait_for(lambda: _done(tmp_path, 2), timeout=30)
    finally:
        assert stop_process(daemon) == 0
    videos = server_videos(server)
    assert videos["before start"]["sha256"] == before
    slow_sha = sha256_file(export / "room 2" / "slow.mp4")
    assert videos["slow"]["sha256"] == slow_sha
    assert videos["slow"]["received"] == 15 * 64 * KiB
    events = log_events(log)
    created = _event_time(events, "record.created", name="slow")
    # Not before the writer closed it and the file was still for `settle` (1 s).
    assert created >= closed_at + 1.0, (created, closed_at)
    print(f"writer closed -> record created: {created - closed_at:.2f} s (settle 1 s)")


def test_rescan_finds_a_file_that_made_no_event(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config = write_config(tmp_path, server.url, watch={"rescan_interval": "1s", "settle": "0.2s"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, ingestd_env(INGESTD_NO_WATCH_EVENTS="1"))
    try:
        wait_for(lambda: "watcher.events_disabled" in log.read_text(), timeout=20)
        digest = random_file(export / "deep" / "er" / "hidden.mp4", 300 * KiB)
        wait_for(lambda: _done(tmp_path, 1), timeout=20)
    finally:
        assert stop_process(daemon) == 0
    assert server_videos(server)["hidden"]["sha256"] == digest
    events = log_events(log)
    rescans = [e for e in events if e["event"] == "watcher.rescan" and e["new_or_changed"]]
    assert [e["why"] for e in rescans] == ["interval"]


def test_sigterm_drains_and_the_next_start_finishes_without_a_second_record(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    size = 60 * CHUNK
    digest = random_file(export / "long.mp4", size)
    server.set_faults(slow_rate=1.0, slow_seconds=0.1)
    config = write_config(
        tmp_path, server.url, upload={"workers": 1, "drain_timeout": "5s"}, watch={"settle": "0.1s"}
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 5 * CHUNK, timeout=30)
    sent_at = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    drain = time.monotonic() - sent_at
    assert drain < 5 + 2, drain
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "uploading" and 0 < row["bytes_acked"] < size
    assert (
        row["bytes_acked"] == server.snapshot()["upload_bytes_received"]
    )  # nothing in flight lost
    print(f"SIGTERM -> exit: {drain:.2f} s")

    server.set_faults(slow_rate=0.0)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _done(tmp_path, 1), timeout=30)
    finally:
        assert stop_process(daemon) == 0
    assert len(server.snapshot()["records"]) == 1
    assert server_videos(server)["long"]["sha256"] == digest
    assert server.snapshot()["upload_bytes_received"] == size


def test_drain_is_bounded_and_a_second_signal_exits_at_once(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "stuck.mp4", 8 * CHUNK)
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "drain_timeout": "1s"},
        valt={"timeout": "30s"},
        watch={"settle": "0.1s"},
    )
    server.set_faults(hang_rate=1.0)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    wait_for(lambda: _queued(tmp_path), timeout=20)
    wait_for(lambda: _hangs(server) >= 1)  # the login request now hangs
    sent_at = time.monotonic()
    assert stop_process(daemon, timeout=10) == 0
    assert time.monotonic() - sent_at < 1 + 2

    # A drain far longer than the bound below: exiting within it is the second signal's doing.
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "drain_timeout": "20s"},
        valt={"timeout": "30s"},
        watch={"settle": "0.1s"},
    )
    second_log = tmp_path / "second.log"
    daemon = start_daemon(config, second_log)
    hung = _hangs(server)
    wait_for(lambda: "daemon.started" in second_log.read_text(), timeout=20)
    wait_for(lambda: _hangs(server) > hung)  # the job's first request now hangs
    daemon.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    sent_at = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 1
    assert time.monotonic() - sent_at < 5.0


def test_a_second_signal_closes_the_ledger_cleanly_and_the_next_start_resumes(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    size = 40 * CHUNK
    digest = random_file(export / "take.mp4", size)
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "drain_timeout": "60s"},
        valt={"timeout": "60s"},
        watch={"settle": "0.1s"},
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 4 * CHUNK, timeout=30)
    server.set_faults(hang_rate=1.0)  # the next chunk never gets an answer
    time.sleep(1.0)  # a chunk (0.05 s each) is now waiting for its answer
    daemon.send_signal(signal.SIGTERM)  # the drain would wait the full drain_timeout
    wait_for(lambda: "daemon.stopping" in log.read_text(), timeout=10)
    sent_at = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(5) == 1
    assert time.monotonic() - sent_at < 2.0
    # Closed, not abandoned: the last connection's close folds the WAL into the ledger.
    assert not (tmp_path / "ledger.db-wal").exists()
    stopped = [e for e in log_events(log) if e["event"] == "daemon.stopped"]
    assert stopped and stopped[-1]["exit_code"] == 1 and stopped[-1]["forced"] is True
    checked = run_cli("ledger", "check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "uploading" and 0 < row["bytes_acked"] < size

    server.set_faults(hang_rate=0.0, slow_rate=0.0)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _done(tmp_path, 1), timeout=30)
    finally:
        assert stop_process(daemon) == 0
    assert server_videos(server)["take"]["sha256"] == digest
    assert len(server.snapshot()["records"]) == 1
    assert any(e["event"] == "upload.resumed" for e in log_events(log))


def test_sigkill_then_restart_resumes(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    size = 40 * CHUNK
    digest = random_file(export / "take.mp4", size)
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    config = write_config(tmp_path, server.url, upload={"workers": 1}, watch={"settle": "0.1s"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 8 * CHUNK, timeout=30)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    server.set_faults(slow_rate=0.0)
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _done(tmp_path, 1), timeout=30)
    finally:
        assert stop_process(daemon) == 0
    assert server_videos(server)["take"]["sha256"] == digest
    assert len(server.snapshot()["records"]) == 1
    assert server.snapshot()["upload_bytes_received"] - size <= CHUNK
    assert any(e["event"] == "upload.resumed" for e in log_events(log))


def _hangs(server: FakeValtThread) -> int:
    return int(server.snapshot()["faults_injected"].get("hang", 0))


def test_retry_failed_and_pause_resume_reach_a_running_daemon(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    server.set_faults(fail_names=["a"])  # a.mp4's create-upload 500s; others are answered
    config = write_config(
        tmp_path, server.url, upload={"max_attempts": 2}, watch={"settle": "0.1s"}
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        random_file(export / "a.mp4", 300 * KiB, seed=1)
        wait_for(
            lambda: any(r["state"] == "failed" for r in ledger_rows(tmp_path / "ledger.db")), 30
        )
        server.set_faults(fail_names=[])
        assert run_cli("retry", "-c", str(config), "--failed").returncode == 0
        retried_at = time.monotonic()
        wait_for(lambda: _done(tmp_path, 1), timeout=10)
        assert time.monotonic() - retried_at < 5

        assert run_cli("pause", "-c", str(config)).returncode == 0
        wait_for(lambda: "daemon.paused" in log.read_text(), timeout=10)  # seen by its poll
        random_file(export / "b.mp4", 300 * KiB, seed=2)
        wait_for(lambda: job_states(tmp_path / "ledger.db").get("b.mp4") == "queued")
        time.sleep(1)  # a worker would take it at once, were the daemon not paused
        assert job_states(tmp_path / "ledger.db")["b.mp4"] == "queued"
        status = run_cli("status", "-c", str(config), "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["paused"] is True
        assert run_cli("resume", "-c", str(config)).returncode == 0
        resumed_at = time.monotonic()
        wait_for(lambda: _done(tmp_path, 2), timeout=10)
        assert time.monotonic() - resumed_at < 5
    finally:
        assert stop_process(daemon) == 0


def test_status_reads_while_the_daemon_writes(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for n in range(4):
        random_file(export / f"clip{n}.mp4", 20 * CHUNK, seed=n)
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] > 0, timeout=20)
        seen_active = False
        for _ in range(5):
            result = run_cli("status", "-c", str(config), "--json")
            assert result.returncode == 0, result.stderr
            status = json.loads(result.stdout)
            assert sum(status["counts"].values()) == 4
            seen_active |= bool(status["active"])
            text = run_cli("status", "-c", str(config))
            assert text.returncode == 0 and "jobs:" in text.stdout
        assert seen_active
    finally:
        assert stop_process(daemon) == 0


def test_wrong_password_is_not_hammered(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 300 * KiB)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log, ingestd_env(INGESTD_VALT_PASSWORD="wrong-" + PASSWORD))
    try:
        wait_for(lambda: "auth.failed" in log.read_text(), timeout=20)
        time.sleep(6)
    finally:
        assert stop_process(daemon) == 0
    assert server.snapshot()["login_failures"] == 1
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] in ("queued", "creating") and row["attempts"] == 0
    assert row["fail_reason"] is None


def test_sighup_is_logged_not_fatal(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    config = write_config(tmp_path, server.url)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: "daemon.started" in log.read_text(), timeout=20)
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: "daemon.reload_unsupported" in log.read_text(), timeout=10)
        assert daemon.poll() is None
    finally:
        assert stop_process(daemon) == 0
