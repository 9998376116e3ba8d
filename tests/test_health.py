"""``/healthz`` and ``/metrics`` of the daemon as a real process, on a free loopback port."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import (
    KiB,
    MiB,
    free_port,
    health,
    ingestd_env,
    ledger_rows,
    random_file,
    run_once,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


def _config(tmp_path: Path, url: str, port: int, **sections: dict[str, Any]) -> Path:
    return write_config(tmp_path, url, status={"listen": f"127.0.0.1:{port}"}, **sections)


def _get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body); status 0 while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        try:
            return error.code, error.read().decode()
        finally:
            error.close()
    except OSError:
        return 0, ""


def _unhealthy_with(port: int, words: str, timeout: float = 20) -> dict[str, Any]:
    """Wait for a 503 whose problems mention ``words``; returns the body."""

    def check() -> dict[str, Any] | None:
        status, body = health(port, wait=30)
        if status == 503 and any(words in problem for problem in body["problems"]):
            return body
        return None

    body: dict[str, Any] = wait_for(check, timeout=timeout, interval=0.2)
    assert body["status"] == "unhealthy"
    return body


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in the metrics"
    return float(match.group(1))


def test_idle_daemon_is_healthy_and_sends_nothing_to_valt(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    daemon = start_daemon(_config(tmp_path, server.url, port), tmp_path / "daemon.log")
    try:
        status, body = health(port, wait=30)
        assert (status, body["status"], body["problems"]) == (200, "ok", [])
        assert body["backlog"] == 0 and body["mode"] == "daemon"
        before = server.snapshot()["requests"]
        for _ in range(12):  # health checks and scrapes for 3 s: none may reach the server
            assert _get(port, "/healthz")[0] == 200
            assert _get(port, "/metrics")[0] == 200
            time.sleep(0.25)
        assert server.snapshot()["requests"] == before
        metrics = _get(port, "/metrics")[1]
        assert _metric(metrics, "ingestd_up") == 1
        assert _metric(metrics, "ingestd_healthy") == 1
        assert _metric(metrics, 'ingestd_jobs{state="waiting"}') == 0
        assert _metric(metrics, 'ingestd_watch_free_bytes{volume="0"}') > 0
    finally:
        assert stop_process(daemon) == 0
    assert _get(port, "/healthz")[0] == 0  # the server stops with the daemon


def test_refused_credentials_make_healthz_fail(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    port = free_port()
    env = ingestd_env(INGESTD_VALT_PASSWORD="not-the-password")
    daemon = start_daemon(_config(tmp_path, server.url, port), tmp_path / "daemon.log", env)
    try:
        _unhealthy_with(port, "credentials refused")
        assert _metric(_get(port, "/metrics")[1], "ingestd_auth_failed") == 1
    finally:
        assert stop_process(daemon) == 0


def test_low_free_space_makes_healthz_fail(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    config = _config(tmp_path, server.url, port, watch={"min_free": "1000TB"})
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        body = _unhealthy_with(port, "watch.min_free")
        assert body["problems"] == [
            problem for problem in body["problems"] if "watch.paths[0]" in problem
        ]
    finally:
        assert stop_process(daemon) == 0


def test_unreachable_server_makes_healthz_fail_after_an_attempt(
    tmp_path: Path, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    daemon = start_daemon(_config(tmp_path, nowhere, port), tmp_path / "daemon.log")
    try:
        _unhealthy_with(port, "the Valt server is unreachable since ")
        metrics = _get(port, "/metrics")[1]
        assert _metric(metrics, "ingestd_server_contact_failures_total") >= 1
        assert _metric(metrics, "ingestd_server_up") == 0
        assert _metric(metrics, 'ingestd_retries_total{cause="connection"}') == 0  # none counts
    finally:
        assert stop_process(daemon) == 0


def test_metrics_move_during_a_real_upload_and_name_no_path(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    size = 12 * MiB  # 48 chunks of 256 KiB, 50 ms each on the server: a few seconds
    random_file(export / "Jane Doe interview.mp4", size)
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    port = free_port()
    daemon = start_daemon(_config(tmp_path, server.url, port), tmp_path / "daemon.log")
    try:

        def sent() -> float:
            return _metric(_get(port, "/metrics")[1], "ingestd_bytes_uploaded_total")

        health(port, wait=30)  # listening
        first = wait_for(sent, timeout=30)
        time.sleep(0.5)
        second = sent()
        assert first < second < size, (first, second)
        during = _get(port, "/metrics")[1]
        assert _metric(during, "ingestd_uploads_completed_total") == 0
        assert _metric(during, 'ingestd_jobs{state="uploading"}') == 1
        wait_for(lambda: [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done"])
        after = _get(port, "/metrics")[1]
    finally:
        assert stop_process(daemon) == 0
    assert _metric(after, "ingestd_bytes_uploaded_total") == size
    assert _metric(after, "ingestd_uploads_completed_total") == 1
    assert _metric(after, "ingestd_upload_duration_seconds_count") == 1
    assert _metric(after, "ingestd_upload_rate_bytes_per_second_count") == 1
    assert _metric(after, 'ingestd_jobs{state="done"}') == 1
    assert _metric(after, "ingestd_last_upload_timestamp_seconds") > time.time() - 120
    for text in (during, after):
        assert "Jane" not in text and "interview" not in text and str(tmp_path) not in text
        samples = [line for line in text.splitlines() if not line.startswith("#")]
        assert not [line for line in samples if "/" in line]  # no path in any label


def test_a_port_in_use_is_a_clear_error(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_once(_config(tmp_path, server.url, port), "10m")
    assert done.returncode == 1, done.stderr
    assert f"status.listen: cannot listen on 127.0.0.1:{port}" in done.stderr
