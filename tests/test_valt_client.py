"""The Valt client against the fake server over loopback HTTP: login, renewal, typed failures.

The fake runs in its own thread (``server`` fixture); the client runs in the
test's event loop, exactly as the daemon runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import PASSWORD, REPO, USERNAME, KiB, MiB, issued_tokens

from ingestd.errors import (
    AuthFailed,
    BodyTooLarge,
    ChunkRefused,
    PermanentError,
    RetryableError,
)
from ingestd.fake_valt import FakeValtThread
from ingestd.logs import secrets_in
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import ValtClient


def _client(
    server: FakeValtThread, *, password: str = PASSWORD, timeout: float = 5.0
) -> ValtClient:
    return ValtClient(base_url=server.url, username=USERNAME, password=password, timeout=timeout)


def _pieces(data: bytes, piece: int = 64 * KiB) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            yield data[start : start + piece]

    return gen


async def _send(
    client: ValtClient, record_id: str, video_id: str, data: bytes, start: int, end: int, total: int
) -> None:
    await client.upload_chunk(
        record_id,
        video_id,
        filename="clip.mp4",
        content_range=valt_rules.content_range(start, end, total),
        length=end - start,
        pieces=_pieces(data[start:end]),
    )


def _assert_readable(message: str) -> None:
    """A message a person can read: no HTML, no URL query, no token."""
    assert "<" not in message and ">" not in message, message
    assert "access_token" not in message, message
    assert "?" not in message.replace("?[query redacted]", ""), message


# --- login and renewal --------------------------------------------------------------------------


async def test_login_and_server_version(server: FakeValtThread) -> None:
    async with _client(server) as client:
        await client.login()
        version, date = await client.server_version()
    assert version == "6.7.2"
    assert date  # the Date header, for the clock check
    assert client.logins == 1
    assert server.call(lambda fake: fake.logins) == 1


async def test_server_version_logs_in_on_first_use(server: FakeValtThread) -> None:
    async with _client(server) as client:
        version, _ = await client.server_version()
    assert version == "6.7.2"
    assert server.call(lambda fake: fake.logins) == 1


async def test_token_expiring_mid_upload_is_renewed(server: FakeValtThread) -> None:
    # Each token is good for 3 calls: create-upload plus 12 chunks need several logins.
    server.set_faults(token_ttl=3)
    data = hashlib.sha256(b"seed").digest() * (3 * MiB // 32) + b"tail"
    chunk = 256 * KiB
    async with _client(server) as client:
        created = await client.create_upload("renewal", {}, {"users": [], "groups": []})
        for start in range(0, len(data), chunk):
            end = min(len(data), start + chunk)
            await _send(client, created.record_id, created.video_id, data, start, end, len(data))
    logins = server.call(lambda fake: fake.logins)
    assert logins > 1
    assert client.logins == logins
    assert server.call(lambda fake: fake.faults_injected.get("token_expired", 0)) >= 1
    assert server.video_bytes(created.record_id) == data
    video = server.snapshot()["records"][0]["videos"][0]
    assert video["sha256"] == hashlib.sha256(data).hexdigest()


# --- failures and their types ---------------------------------------------------------------------


async def test_500_html_and_json_bodies_are_retryable_and_readable(server: FakeValtThread) -> None:
    async with _client(server) as client:
        await client.login()
        server.set_faults(fail_rate=1.0)
        errors = []
        for _ in range(2):  # the fake alternates: first an HTML page, then Valt's JSON error
            with pytest.raises(RetryableError) as caught:
                await client.server_version()
            errors.append(caught.value)
    assert server.call(lambda fake: fake.faults_injected.get("fail")) == 2
    for error in errors:
        assert error.status == 500
        assert "Internal Server Error" in str(error)
        assert str(error).startswith("GET admin/general: 500")
        _assert_readable(str(error))


async def test_502_html_is_retryable_and_readable(server: FakeValtThread) -> None:
    async with _client(server) as client:
        await client.login()
        server.set_faults(bad_gateway_rate=1.0)
        with pytest.raises(RetryableError) as caught:
            await client.server_version()
    assert caught.value.status == 502
    assert "Bad Gateway" in str(caught.value)
    _assert_readable(str(caught.value))


async def test_dropped_connection_is_retryable(server: FakeValtThread) -> None:
    data = bytes(range(256)) * (2 * MiB // 256)
    async with _client(server) as client:
        created = await client.create_upload("dropped", {}, {})
        server.set_faults(drop_rate=1.0)
        with pytest.raises(RetryableError) as caught:
            await _send(client, created.record_id, created.video_id, data, 0, len(data), len(data))
    assert caught.value.reason == "connection"
    assert caught.value.status is None
    _assert_readable(str(caught.value))
    assert server.call(lambda fake: fake.faults_injected.get("drop")) == 1
    assert server.snapshot()["records"][0]["videos"][0]["received"] == 0


async def test_source_read_error_mid_body_never_shows_the_token(server: FakeValtThread) -> None:
    """A read error mid-chunk (say EIO on a network share) is retryable, and its message,
    in which aiohttp names the whole URL with the token, comes out redacted."""

    async def failing_pieces() -> AsyncIterator[bytes]:
        yield b"v" * (256 * KiB)
        raise OSError(errno.EIO, "Input/output error")

    async with _client(server) as client:
        created = await client.create_upload("eio", {}, {})
        with pytest.raises(RetryableError) as caught:
            await client.upload_chunk(
                created.record_id,
                created.video_id,
                filename="eio.mp4",
                content_range=valt_rules.content_range(0, 1 * MiB, 1 * MiB),
                length=1 * MiB,
                pieces=failing_pieces,
            )
    message = str(caught.value)
    assert caught.value.reason == "connection"
    assert "?[query redacted]" in message, message  # the URL was there, its query is not
    _assert_readable(message)
    tokens = server.call(issued_tokens)
    assert len(tokens) == 1
    assert secrets_in(message, tokens) == [], message
    assert server.snapshot()["records"][0]["videos"][0]["received"] == 0


async def test_hanging_server_times_out_quickly(server: FakeValtThread) -> None:
    async with _client(server, timeout=1.0) as client:
        await client.login()
        server.set_faults(hang_rate=1.0)
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            await client.server_version()
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert "valt.timeout" in str(caught.value)
    assert elapsed < 4.0


async def test_hanging_upload_times_out_quickly(server: FakeValtThread) -> None:
    data = b"x" * (512 * KiB)
    async with _client(server, timeout=1.0) as client:
        created = await client.create_upload("hung", {}, {})
        server.set_faults(hang_rate=1.0)
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            await _send(client, created.record_id, created.video_id, data, 0, len(data), len(data))
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert elapsed < 4.0


class _BodyReader:
    """A bare HTTP server on loopback: logs in anyone, then takes a chunk's body at
    ``rate`` bytes a second (0: it stops reading it) and answers 200 once it has all.
    Its receive buffer is small, so the client's body moves as it is read."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.received = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.done = asyncio.Event()

    async def __aenter__(self) -> str:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        listener.bind(("127.0.0.1", 0))
        self.server = await asyncio.start_server(self._serve, sock=listener)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.done.set()
        self.server.close()
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while not self.done.is_set():
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"(?i)content-length: *(\d+)", head)
                length = int(found.group(1)) if found else 0
                if b"/login" in head.split(b"\r\n")[0]:
                    await reader.readexactly(length)
                    body = json.dumps({"data": {"access_token": "a-token-of-24-chars-x"}})
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
                    continue
                if not self.rate:
                    await self.done.wait()
                    return
                while self.received < length:
                    part = await reader.read(min(self.rate // 100, length - self.received))
                    self.received += len(part)
                    await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


async def _upload(url: str, size: int, timeout: float) -> None:
    data = b"v" * size
    async with ValtClient(
        base_url=url, username=USERNAME, password=PASSWORD, timeout=timeout
    ) as client:
        await client.upload_chunk(
            "rec",
            "vid",
            filename="clip.mp4",
            content_range=valt_rules.content_range(0, size, size),
            length=size,
            pieces=_pieces(data, piece=64 * KiB),
        )


async def test_a_server_that_stops_reading_the_body_times_out_within_valt_timeout() -> None:
    """The socket buffers fill, the body stops moving: cut after ``valt.timeout``."""
    async with _BodyReader(rate=0) as url:
        started = time.monotonic()
        with pytest.raises(RetryableError) as caught:
            await _upload(url, 64 * MiB, timeout=1.0)
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert 1.0 <= elapsed < 4.0


async def test_a_body_that_moves_slowly_is_never_cut_off() -> None:
    """The deadline follows the body: a chunk that takes several ``valt.timeout`` to go,
    but never stops for one, goes through."""
    reader = _BodyReader(rate=16 * MiB)
    async with reader as url:
        started = time.monotonic()
        await _upload(url, 40 * MiB, timeout=1.0)
        elapsed = time.monotonic() - started
    assert reader.received > 40 * MiB  # the chunk inside its multipart frame
    assert elapsed > 2.0  # longer than valt.timeout, yet not cut


async def test_413_is_body_too_large(server: FakeValtThread) -> None:
    data = b"y" * (512 * KiB)
    async with _client(server) as client:
        created = await client.create_upload("big", {}, {})
        server.set_faults(max_body=256 * KiB)
        with pytest.raises(BodyTooLarge) as caught:
            await _send(client, created.record_id, created.video_id, data, 0, len(data), len(data))
        # A chunk under the limit still goes through on the same client.
        await _send(client, created.record_id, created.video_id, data, 0, 128 * KiB, len(data))
    assert caught.value.status == 413
    assert "Request Entity Too Large" in str(caught.value)
    _assert_readable(str(caught.value))
    assert server.snapshot()["records"][0]["videos"][0]["received"] == 128 * KiB


async def test_chunk_after_a_gap_is_refused(server: FakeValtThread) -> None:
    data = b"z" * 4096
    async with _client(server) as client:
        created = await client.create_upload("gap", {}, {})
        await _send(client, created.record_id, created.video_id, data, 0, 1024, len(data))
        with pytest.raises(ChunkRefused) as caught:
            await _send(client, created.record_id, created.video_id, data, 2048, 3072, len(data))
        # A repeat of what the server holds is a harmless success.
        await _send(client, created.record_id, created.video_id, data, 0, 1024, len(data))
    assert isinstance(caught.value, PermanentError)
    assert caught.value.status == 400
    assert "gap" in str(caught.value)
    assert server.snapshot()["records"][0]["videos"][0]["received"] == 1024


async def test_missing_record_is_none(server: FakeValtThread) -> None:
    async with _client(server) as client:
        assert await client.get_record("no-such-record") is None
        created = await client.create_upload("present", {}, {})
        found = await client.get_record(created.record_id)
    assert found is not None
    assert found["id"] == created.record_id
    assert found["videos"] is None  # nothing uploaded yet


async def test_wrong_password_fails_once_and_does_not_hammer(server: FakeValtThread) -> None:
    async with _client(server, password="wrong-password-123") as client:
        with pytest.raises(AuthFailed) as first:
            await client.login()
        assert first.value.status == 401
        assert client.auth_failed
        assert client.login_blocked_for() > 30
        with pytest.raises(AuthFailed):
            await client.login()
        with pytest.raises(AuthFailed):
            await client.server_version()  # an authenticated call needs a login: also blocked
    snapshot = server.snapshot()
    assert snapshot["login_failures"] == 1
    assert snapshot["logins"] == 0
    assert snapshot["requests"] == {"POST /api/v3/login": 1}
    assert "wrong-password-123" not in str(first.value)


async def test_create_upload_answered_with_text_is_retryable_bad_answer(
    server: FakeValtThread,
) -> None:
    async with _client(server) as client:
        await client.login()
        server.set_faults(not_json_rate=1.0)
        with pytest.raises(RetryableError) as caught:
            await client.create_upload("not-json", {}, {})
    assert caught.value.reason == "bad_answer"
    _assert_readable(str(caught.value))
    # The call took effect on the server: that is why it is retryable (reconciled by search).
    assert [r["name"] for r in server.snapshot()["records"]] == ["not-json"]


# --- streaming --------------------------------------------------------------------------------

_STREAM_SCRIPT = r"""
import asyncio, json, resource, sys
from ingestd.valt.client import ValtClient
from ingestd.valt import rules as valt_rules

URL, USER, PASSWORD, SIZE = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
PIECE = 256 * 1024
BLOCK = bytes(range(256)) * (PIECE // 256)

async def pieces():
    left = SIZE
    while left:
        n = min(PIECE, left)
        yield BLOCK[:n]
        left -= n

async def main():
    async with ValtClient(base_url=URL, username=USER, password=PASSWORD, timeout=10) as client:
        created = await client.create_upload("stream", {}, {})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await client.upload_chunk(
            created.record_id, created.video_id, filename="big.mp4",
            content_range=valt_rules.content_range(0, SIZE, SIZE), length=SIZE, pieces=pieces,
        )
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after, "record_id": created.record_id}))

asyncio.run(main())
"""


def test_chunk_body_is_streamed_not_buffered(server: FakeValtThread) -> None:
    """A 64 MiB chunk from a piece generator costs the client far less than 64 MiB.

    Measured in a fresh process (ru_maxrss is a lifetime peak: in the pytest
    process, earlier tests and the fake server in its thread would blur it).
    """
    size = 64 * MiB
    result = subprocess.run(
        [sys.executable, "-c", _STREAM_SCRIPT, server.url, USERNAME, PASSWORD, str(size)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    growth = (report["after_kib"] - report["before_kib"]) * KiB  # Linux: ru_maxrss in KiB
    assert growth < 32 * MiB, f"peak memory grew by {growth / MiB:.1f} MiB"
    video = server.snapshot()["records"][0]["videos"][0]
    assert video["received"] == size
    block = bytes(range(256)) * (256 * KiB // 256)
    assert video["sha256"] == hashlib.sha256(block * (size // len(block))).hexdigest()
