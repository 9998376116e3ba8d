"""The status port under attack: idle connections, few file descriptors, and its token.

The daemon runs as a real process with a low RLIMIT_NOFILE, as an attacker on the
network (or a broken scraper) would meet it (issue 11, finding 7).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from conftest import (
    REPO,
    KiB,
    free_port,
    ingestd_env,
    log_events,
    random_file,
    server_videos,
    stop_process,
    wait_for,
    write_config,
)
from structlog.testing import capture_logs

from ingestd.fake_valt import FakeValtThread
from ingestd.observe.http import start_status_server

FD_LIMIT = 128
IDLE_CONNECTIONS = 200
TOKEN = "status-token-0123456789abcdef"


def _start_with_fd_limit(
    config: Path, log_file: Path, limit: int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``ingestd run`` whose soft and hard RLIMIT_NOFILE are ``limit``."""

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with open(log_file, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "ingestd", "run", "-c", str(config)],
            env=env or ingestd_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            preexec_fn=lower_limit,
        )


def _request(
    port: int, path: str = "/healthz", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one GET; raises OSError when refused or cut."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode()
    finally:
        connection.close()


def _answers(port: int, **kwargs: Any) -> tuple[int, dict[str, str], str] | None:
    try:
        return _request(port, **kwargs)
    except OSError:
        return None


def _listening(log_file: Path) -> bool:
    return any(event["event"] == "status.listening" for event in log_events(log_file))


@contextlib.contextmanager
def _idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing, held open while inside."""
    sockets: list[socket.socket] = []
    try:
        for number in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            if number % 16 == 15:
                # A full listen queue drops SYNs, each then retried after 1 s: let it drain.
                time.sleep(0.02)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_idle_connections_do_not_starve_the_daemon_of_file_descriptors(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
    log_file = tmp_path / "daemon.log"
    daemon = _start_with_fd_limit(config, log_file, FD_LIMIT)
    try:
        wait_for(lambda: _listening(log_file), timeout=60)
        with _idle_connections(port, IDLE_CONNECTIONS):
            random_file(export / "during.mp4", 300 * KiB, seed=7)
            wait_for(
                lambda: server_videos(server).get("during", {}).get("status") == "ready",
                timeout=90,
                interval=0.2,
            )
            answer = wait_for(lambda: _answers(port), timeout=30, interval=0.2)
            assert answer[0] == 200, answer
        lines = log_file.read_text(errors="replace").splitlines()
        # A few lines per file and per start; 50,739 accept tracebacks before the fix.
        assert len(lines) < 100, f"{len(lines)} log lines, the first ones: {lines[:5]}"
        text = "\n".join(lines)
        assert "Too many open files" not in text
    finally:
        assert stop_process(daemon) == 0


def _token_config(tmp_path: Path, url: str, port: int) -> Path:
    token_file = tmp_path / "status-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return write_config(
        tmp_path,
        url,
        status={"listen": f"127.0.0.1:{port}", "token_file": str(token_file)},
        log={"level": "debug"},
    )


def test_a_token_guards_every_path_of_the_status_port(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    log_file = tmp_path / "daemon.log"
    daemon = _start_with_fd_limit(_token_config(tmp_path, server.url, port), log_file, 1024)
    try:
        wait_for(lambda: _listening(log_file), timeout=60)
        for path in ("/healthz", "/metrics", "/", "/no-such-page"):
            status, headers, body = _request(port, path)
            assert status == 401, (path, status)
            assert headers.get("WWW-Authenticate", "").startswith("Basic"), headers
            assert "ingestd" not in body or "token" in body  # no page, only the refusal
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {_basic('me', 'nope')}"):
            assert _request(port, headers={"Authorization": wrong})[0] == 401, wrong
        status, _, body = _request(port, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, _, body = _request(
            port, "/metrics", headers={"Authorization": f"Basic {_basic('anyone', TOKEN)}"}
        )
        assert status == 200 and "ingestd_" in body
        status, _, _ = _request(port, headers={"Authorization": f"basic {_basic('', TOKEN)}"})
        assert status == 200
        # The container's HEALTHCHECK reads the same config, and so sends the token.
        assert _healthcheck(tmp_path / "config.yaml").returncode == 0
        no_token = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
        refused = _healthcheck(no_token)
        assert refused.returncode == 1 and "answered 401" in refused.stderr, refused.stderr
    finally:
        assert stop_process(daemon) == 0
    assert TOKEN not in log_file.read_text(errors="replace")


def _healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingestd.observe.healthcheck"],
        env=ingestd_env(INGESTD_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# --- the server in-process: the cap, the deadlines, the accept error ------------------------


def _ping_routes(app: web.Application) -> None:
    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app.router.add_get("/ping", ping)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes this connection (EOF or reset) within a generous wait."""
    try:
        return await asyncio.wait_for(reader.read(), 20) == b""
    except ConnectionError:
        return True


async def _get_ping(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


async def test_a_full_status_port_drops_its_longest_idle_connection() -> None:
    port = free_port()
    # A long header timeout: only the cap may close the idle connection here.
    server = await start_status_server(
        _ping_routes, "127.0.0.1", port, token=None, cap=4, header_timeout=120
    )
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        answer = await _get_ping(port)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"pong"), answer
        assert await _closed_by_server(idle[0][0])  # the oldest made room
        for _reader, writer in idle:
            writer.close()
    finally:
        await server.close()


async def test_a_connection_that_sends_no_whole_request_in_time_is_closed() -> None:
    port = free_port()
    server = await start_status_server(
        _ping_routes, "127.0.0.1", port, token=None, header_timeout=0.3
    )
    try:
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
        slow.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        assert await _closed_by_server(silent_reader)
        assert await _closed_by_server(slow_reader)
        silent.close()
        slow.close()
        assert (await _get_ping(port)).endswith(b"pong")  # a prompt client is served
    finally:
        await server.close()


async def test_running_out_of_descriptors_logs_one_accept_line_not_a_flood() -> None:
    port = free_port()
    server = await start_status_server(_ping_routes, "127.0.0.1", port, token=None, cap=4)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(8)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with capture_logs() as logs:
            lowest_free = os.dup(0)  # descriptors are numbered lowest free first
            os.close(lowest_free)
            # No descriptor left: every accept of the status server fails with EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
            for client in clients:
                client.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    client.connect(("127.0.0.1", port))
            # asyncio retries every second, each time up to backlog accepts: wait for 2 rounds.
            deadline = asyncio.get_running_loop().time() + 60
            while server.accept_errors() < 2 * len(clients):
                assert asyncio.get_running_loop().time() < deadline, server.accept_errors()
                await asyncio.sleep(0.1)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        lines = [entry for entry in logs if entry["event"] == "status.accept_failed"]
        assert len(lines) == 1, lines
        assert "Too many open files" in lines[0]["error"]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
        await server.close()
