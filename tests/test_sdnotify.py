"""The systemd notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from conftest import (
    PASSWORD,
    MiB,
    ingestd_env,
    random_file,
    start_daemon,
    stop_process,
    write_config,
)

from ingestd.config.load import load_config
from ingestd.daemon.lifecycle import Daemon
from ingestd.daemon.sdnotify import Notifier
from ingestd.fake_valt import FakeValtThread


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def _drain(sock: socket.socket, seconds: float) -> list[str]:
    messages = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_notifier_sends_to_a_path_and_an_abstract_socket(tmp_path: Path) -> None:
    with _listen(tmp_path / "notify") as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert notifier.ready("starting")
        assert sock.recv(100) == b"READY=1\nSTATUS=starting"
        notifier.close()
    abstract = f"ingestd-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + abstract)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + abstract})
        assert notifier.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_is_inert_without_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval == 4.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_daemon_reports_ready_status_watchdog_and_stopping(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", MiB)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    with _listen(tmp_path / "notify") as sock:
        env = ingestd_env(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="2000000")
        daemon = start_daemon(config, tmp_path / "daemon.log", env)
        try:
            messages = _drain(sock, 6)
            # Status lines come every 5 s: on a loaded machine, wait for the idle one.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any("idle:" in m for m in messages):
                messages += _drain(sock, 1)
        finally:
            assert stop_process(daemon) == 0
        messages += _drain(sock, 0.5)
    assert messages[0].startswith("READY=1\n")
    assert sum(m == "WATCHDOG=1" for m in messages) >= 4  # every second with WatchdogSec=2s
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert any("idle: every file is uploaded" in m for m in statuses), statuses
    stopping = [n for n, m in enumerate(messages) if m.startswith("STOPPING=1\n")]
    assert len(stopping) == 1, messages[-5:]
    assert all(m == "WATCHDOG=1" for m in messages[stopping[0] + 1 :])


async def test_a_stuck_main_loop_stops_the_watchdog_pings(
    tmp_path: Path, server: FakeValtThread
) -> None:
    (tmp_path / "export").mkdir()
    config = load_config(write_config(tmp_path, server.url))
    with _listen(tmp_path / "notify") as sock:
        daemon = Daemon(config, PASSWORD)
        daemon.notifier = Notifier(
            {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
        )
        daemon.heartbeat = time.monotonic()

        async def status_line() -> str:
            return "testing"

        daemon.status_line = status_line  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(daemon._service_status(stop))
        await asyncio.sleep(0.5)
        alive = await asyncio.to_thread(_drain, sock, 0.1)
        daemon.heartbeat = time.monotonic() - 60  # the dispatcher stopped beating
        await asyncio.to_thread(_drain, sock, 0.3)  # what was already queued
        await asyncio.sleep(1.0)
        wedged = await asyncio.to_thread(_drain, sock, 0.1)
        stop.set()
        await task
        daemon.notifier.close()
    assert "WATCHDOG=1" in alive
    assert "WATCHDOG=1" not in wedged
