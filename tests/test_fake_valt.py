"""The fake Valt server, over real loopback HTTP: the API shapes, the chunk rules, the faults.

Other tests trust the fake to hold the rules of valt-api.md strictly; these
tests are what that trust rests on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import KiB, random_file, run_once, write_config

from ingestd.fake_valt import FakeValt, FakeValtThread, Faults

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
NGINX_413 = (
    "<html><head><title>413 Request Entity Too Large</title></head><body><center>"
    "<h1>413 Request Entity Too Large</h1></center><hr><center>nginx</center></body></html>"
)
UPLOAD_ROUTE = "POST /api/v3/records/{record_id}/videos/{video_id}"


@dataclass
class Answer:
    """An HTTP answer, read completely so no response is left open."""

    status: int
    text: str
    content_type: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Client:
    """A minimal Valt client for poking the fake; deliberately not ingestd's own."""

    session: aiohttp.ClientSession
    base: str
    token: str = ""
    timeout: aiohttp.ClientTimeout = field(default_factory=lambda: aiohttp.ClientTimeout(10))

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> Answer:
        token = self.token if token is None else token
        params = {"access_token": token} if token else {}
        kwargs.setdefault("timeout", self.timeout)
        async with self.session.request(
            method, f"{self.base}/api/v3/{path}", params=params, **kwargs
        ) as response:
            return Answer(response.status, await response.text(), response.content_type)

    async def login(self, username: str = "ingest", password: str = "secret") -> Answer:
        answer = await self.call(
            "POST", "login", token="", json={"username": username, "password": password}
        )
        if answer.status == 200:
            self.token = answer.json()["data"]["access_token"]
        return answer

    async def create(self, name: str = "Interview", **payload: Any) -> tuple[str, str]:
        answer = await self.call("POST", "records/create-upload", json={"name": name, **payload})
        assert answer.status == 200, answer
        body = answer.json()
        return body["id"], body["videos"][0]

    async def upload(
        self, record_id: str, video_id: str, data: bytes, start: int, total: int, **kw: Any
    ) -> Answer:
        form = aiohttp.FormData()
        form.add_field("file", data, filename="clip.mp4", content_type="video/mp4")
        headers = {"Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"}
        headers.update(kw.pop("headers", {}))
        return await self.call(
            "POST", f"records/{record_id}/videos/{video_id}", data=form, headers=headers, **kw
        )

    async def record(self, record_id: str) -> Answer:
        return await self.call("GET", f"records/{record_id}")

    async def search(self, **payload: Any) -> list[dict[str, Any]]:
        answer = await self.call("POST", "records", json=payload)
        assert answer.status == 200, answer
        records: list[dict[str, Any]] = answer.json()["data"]["records"]
        return records


def error_of(answer: Answer) -> tuple[int, str]:
    body = answer.json()
    return body["error"]["code"], body["error"]["message"]


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeValt]:
    server = FakeValt(tmp_path / "valt", users={"ingest": "secret", "alice": "pw"})
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def client(fake: FakeValt, session: aiohttp.ClientSession) -> Client:
    valt = Client(session, fake.url)
    assert (await valt.login()).status == 200
    return valt


def payload(size: int) -> bytes:
    return os.urandom(size)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until the server has caught up with something the client did."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# --- authentication -----------------------------------------------------------------


async def test_login_gives_a_hex_token_and_wrong_credentials_get_401(
    fake: FakeValt, session: aiohttp.ClientSession
) -> None:
    valt = Client(session, fake.url)
    ok = await valt.login()
    assert ok.status == 200
    assert re.fullmatch(r"[0-9a-f]{32}", ok.json()["data"]["access_token"])
    wrong = await valt.login(password="nope")
    assert (wrong.status, wrong.json()) == (401, {"data": "Invalid username or password"})
    unknown = await valt.login(username="mallory")
    assert unknown.status == 401
    assert (fake.logins, fake.login_failures) == (1, 2)


async def test_missing_and_unknown_tokens_are_refused(client: Client) -> None:
    missing = await client.call("GET", "admin/general", token="")
    assert missing.status == 401
    assert error_of(missing) == (401, "No API token provided")
    unknown = await client.call("GET", "admin/general", token="0" * 32)
    assert error_of(unknown) == (401, "Bad credentials.")
    ok = await client.call("GET", "admin/general")
    assert ok.json() == {"data": {"version": "6.7.2"}}


async def test_token_expires_after_ttl_uses_and_a_new_login_works(
    fake: FakeValt, client: Client
) -> None:
    fake.set_faults(token_ttl=2)
    assert (await client.call("GET", "admin/general")).status == 200
    assert (await client.call("GET", "admin/general")).status == 200
    expired = await client.call("GET", "admin/general")
    assert error_of(expired) == (401, "Bad credentials.")
    assert error_of(await client.call("GET", "admin/general")) == (401, "Bad credentials.")
    assert (await client.login()).status == 200
    assert (await client.call("GET", "admin/general")).status == 200
    assert fake.faults_injected["token_expired"] == 2


# --- records ------------------------------------------------------------------------


async def test_create_upload_makes_a_record_with_an_empty_video(
    fake: FakeValt, client: Client
) -> None:
    before = int(time.time())
    record_id, video_id = await client.create(
        "Interview 3", template={"1": "K-17"}, share={"users": [2], "groups": [4]}
    )
    assert UUID4.fullmatch(record_id)
    assert UUID4.fullmatch(video_id)
    data = (await client.record(record_id)).json()["data"]
    assert data["id"] == record_id
    assert data["name"] == "Interview 3"
    assert data["template"] == {"1": "K-17"}
    assert data["sharing"] == {"users": [2], "groups": [4]}
    assert data["author"] == "ingest"
    assert data["duration"] == 0
    assert before <= data["created"] <= int(time.time())
    assert data["videos"] is None  # no byte has arrived yet
    record = fake.records[record_id]
    assert record.videos[0].id == video_id
    assert (record.videos[0].received, record.videos[0].status) == (0, "created")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"name": ""}',
        b'{"name": 5}',
        b'{"name": "x", "template": {"1": 2}}',
        b'{"name": "x", "template": []}',
        b'{"name": "x", "share": {"users": ["alice"]}}',
    ],
)
async def test_create_upload_with_an_invalid_payload_gets_500(
    fake: FakeValt, client: Client, body: bytes
) -> None:
    answer = await client.call(
        "POST", "records/create-upload", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 500
    assert error_of(answer) == (500, "Invalid request payload")
    assert fake.records == {}


async def test_unknown_record_gets_404(client: Client) -> None:
    answer = await client.record("no-such-record")
    assert answer.status == 404
    assert error_of(answer) == (404, "Record not found")


async def test_search_is_a_case_insensitive_substring_match_newest_first(
    fake: FakeValt, client: Client
) -> None:
    now = int(time.time())
    old = fake.seed_record("interview ROOM 3", created=now - 3 * 86400, author="capture-2")
    other = fake.seed_record("Something else", created=now - 60)
    mine, _ = await client.create("Interview Room 3 (take 2)")
    full = fake.seed_record("Interview room 3", created=now - 30, with_video=True)

    found = await client.search(search="room 3")
    assert [r["id"] for r in found] == [mine, full, old]
    assert other not in [r["id"] for r in found]
    by_id = {r["id"]: r for r in found}
    assert by_id[old]["author"] == "capture-2"
    assert by_id[mine]["author"] == "ingest"
    assert by_id[old]["videos"] is None
    assert by_id[full]["videos"][0]["status"] == {"type": "ready"}
    assert set(by_id[mine]) >= {"id", "name", "created", "author", "videos"}

    today = datetime.fromtimestamp(now).strftime("%m-%d-%Y")
    recent = await client.search(search="ROOM", start_date=today, end_date=today)
    assert old not in [r["id"] for r in recent]
    three_days_ago = (datetime.fromtimestamp(now) - timedelta(days=3)).strftime("%m-%d-%Y")
    oldest = await client.search(search="room", start_date=three_days_ago, end_date=three_days_ago)
    assert [r["id"] for r in oldest] == [old]

    page = await client.search(search="room 3", offset=1, limit=1)
    assert [r["id"] for r in page] == [full]
    assert len(await client.search()) == 4
    bad_date = await client.call("POST", "records", json={"search": "x", "start_date": "2026-1-1"})
    assert error_of(bad_date) == (500, "Invalid request payload")


async def test_delete_removes_the_record_and_its_bytes(fake: FakeValt, client: Client) -> None:
    record_id, video_id = await client.create()
    assert (await client.upload(record_id, video_id, b"abc", 0, 10)).status == 200
    stored = fake.records[record_id].videos[0].path
    assert stored is not None
    assert stored.exists()

    answer = await client.call("POST", f"records/{record_id}/delete", json={})
    assert (answer.status, answer.json()) == (200, {"data": {"id": record_id}})
    assert record_id not in fake.records
    assert fake.deleted == [record_id]
    assert not stored.exists()
    assert (await client.record(record_id)).status == 404
    assert (await client.upload(record_id, video_id, b"defg", 3, 10)).status == 404
    again = await client.call("POST", f"records/{record_id}/delete", json={})
    assert error_of(again) == (404, "Record not found")


async def test_admin_calls_list_users_groups_and_templates(fake: FakeValt, client: Client) -> None:
    users = (await client.call("GET", "admin/users")).json()["data"]["users"]
    assert {"id": 1, "name": "ingest"} in users
    assert [u["name"] for u in users] == ["ingest", "alice", "bob"]
    groups = (await client.call("GET", "admin/user_groups")).json()["data"]["userGroups"]
    assert groups == [{"id": 4, "name": "staff"}, {"id": 5, "name": "trainees"}]
    template = (await client.call("GET", "admin/templates/1")).json()["data"]
    assert template["name"] == "Interview"
    assert template["fields"][0] == {
        "id": 1,
        "name": "Case number",
        "type": "text",
        "required": True,
    }
    assert template["fields"][1]["required"] is False
    assert (await client.call("GET", "admin/templates/9")).status == 404

    fake.set_faults(admin_forbidden=True)
    for path in ("admin/users", "admin/user_groups", "admin/templates/1"):
        answer = await client.call("GET", path)
        assert error_of(answer) == (403, "Forbidden"), path
    assert (await client.call("GET", "admin/general")).status == 200


# --- the chunk rules ----------------------------------------------------------------


async def test_three_chunks_arrive_byte_identical(fake: FakeValt, client: Client) -> None:
    data = payload(300_000)
    record_id, video_id = await client.create()
    answers = [
        await client.upload(record_id, video_id, data[start : start + 100_000], start, len(data))
        for start in (0, 100_000, 200_000)
    ]
    assert [(a.status, a.text) for a in answers[:2]] == [(200, ""), (200, "")]
    assert answers[2].status == 200
    assert answers[2].json() == {"id": record_id, "videos": [video_id]}

    video = fake.records[record_id].videos[0]
    assert (video.total, video.received) == (len(data), len(data))
    assert video.sha256 == hashlib.sha256(data).hexdigest()
    assert fake.video_bytes(record_id) == data
    assert fake.upload_bytes_received == len(data)
    assert fake.request_log[-1] == (
        "POST",
        f"/api/v3/records/{record_id}/videos/{video_id}",
        200,
        "bytes 200000-299999/300000",
    )
    assert fake.snapshot()["requests"][UPLOAD_ROUTE] == 3


async def test_a_repeated_chunk_is_a_harmless_no_op(fake: FakeValt, client: Client) -> None:
    data = payload(30_000)
    record_id, video_id = await client.create()
    await client.upload(record_id, video_id, data[:10_000], 0, len(data))
    await client.upload(record_id, video_id, data[10_000:20_000], 10_000, len(data))
    repeat = await client.upload(record_id, video_id, data[:10_000], 0, len(data))
    assert (repeat.status, repeat.text) == (200, "")
    video = fake.records[record_id].videos[0]
    assert video.received == 20_000
    await client.upload(record_id, video_id, data[20_000:], 20_000, len(data))
    # After completion, any chunk of the video is wholly inside what is held.
    late = await client.upload(record_id, video_id, data[20_000:], 20_000, len(data))
    assert (late.status, late.text) == (200, "")
    assert fake.video_bytes(record_id) == data
    assert video.sha256 == hashlib.sha256(data).hexdigest()
    assert fake.chunk_repeats == 2
    assert fake.upload_bytes_received == len(data) + 20_000  # repeats count as resent bytes


async def test_chunks_breaking_the_rules_are_refused_and_change_nothing(
    fake: FakeValt, client: Client
) -> None:
    data = payload(40_000)
    record_id, video_id = await client.create()
    await client.upload(record_id, video_id, data[:10_000], 0, len(data))

    gap = await client.upload(record_id, video_id, data[20_000:30_000], 20_000, len(data))
    overlap = await client.upload(record_id, video_id, data[5_000:15_000], 5_000, len(data))
    other_total = await client.upload(record_id, video_id, data[10_000:20_000], 10_000, 50_000)
    short = await client.upload(
        record_id,
        video_id,
        data[10_000:20_000],
        10_000,
        len(data),
        headers={"Content-Range": f"bytes 10000-20000/{len(data)}"},
    )
    for answer in (gap, overlap, other_total, short):
        assert answer.status == 400
        assert error_of(answer)[0] == 400
    assert "gap" in error_of(gap)[1]
    assert "total" in error_of(other_total)[1]

    for bad in ("", "bytes 10000-19999", "bytes=10000-19999/40000", "bytes 10000-40000/40000"):
        headers = {"Content-Range": bad} if bad else {}
        form = aiohttp.FormData()
        form.add_field("file", data[10_000:20_000], filename="clip.mp4")
        answer = await client.call(
            "POST", f"records/{record_id}/videos/{video_id}", data=form, headers=headers
        )
        assert answer.status == 400, bad
        assert "Content-Range" in error_of(answer)[1]

    not_multipart = await client.call(
        "POST",
        f"records/{record_id}/videos/{video_id}",
        data=data[10_000:20_000],
        headers={"Content-Range": "bytes 10000-19999/40000"},
    )
    assert not_multipart.status == 400

    video = fake.records[record_id].videos[0]
    assert (video.received, video.total) == (10_000, len(data))
    assert fake.video_bytes(record_id) == data[:10_000]
    assert video.sha256 == hashlib.sha256(data[:10_000]).hexdigest()
    assert fake.chunk_repeats == 0
    unknown = await client.upload(record_id, "no-such-video", data[:10], 0, 10)
    assert error_of(unknown) == (404, "Video not found")
    assert (await client.upload("no-such-record", video_id, data[:10], 0, 10)).status == 404


async def test_a_streamed_chunk_without_content_length_is_accepted(
    fake: FakeValt, client: Client
) -> None:
    data = payload(700_000)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65_536):
            yield data[start : start + 65_536]

    record_id, video_id = await client.create()
    form = aiohttp.FormData()
    form.add_field("file", pieces(), filename="clip.mp4")
    answer = await client.call(
        "POST",
        f"records/{record_id}/videos/{video_id}",
        data=form,
        headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
    )
    assert answer.status == 200
    assert fake.video_bytes(record_id) == data

    # Without a Content-Length, max_body is judged on the bytes that arrive.
    fake.set_faults(max_body=100_000)
    second_id, second_video = await client.create()
    form = aiohttp.FormData()
    form.add_field("file", pieces(), filename="clip.mp4")
    refused = await client.call(
        "POST",
        f"records/{second_id}/videos/{second_video}",
        data=form,
        headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
    )
    assert (refused.status, refused.text) == (413, NGINX_413)
    assert fake.records[second_id].videos[0].received == 0
    assert fake.video_bytes(second_id) == b""


async def test_a_chunk_cut_off_mid_body_leaves_the_video_as_it_was(
    fake: FakeValt, client: Client
) -> None:
    record_id, video_id = await client.create()
    await client.upload(record_id, video_id, b"a" * 1000, 0, 400_000)
    host, port = fake.url.removeprefix("http://").split(":")
    boundary = "cut-off-boundary"
    part_head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="clip.mp4"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body_length = len(part_head) + 300_000 + len(f"\r\n--{boundary}--\r\n")
    head = (
        f"POST /api/v3/records/{record_id}/videos/{video_id}?access_token={client.token} "
        f"HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {body_length}\r\nContent-Range: bytes 1000-300999/400000\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + part_head)
    for _ in range(3):  # the server holds one read back to look for the boundary
        writer.write(b"b" * 50_000)
        await writer.drain()
        await asyncio.sleep(0.05)
    await eventually(lambda: fake.upload_bytes_received > 1000)  # bytes went to disk
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: len(fake.request_log) == 4)
    assert fake.request_log[-1].status == 0
    video = fake.records[record_id].videos[0]
    assert video.received == 1000
    assert fake.video_bytes(record_id) == b"a" * 1000
    rest = b"c" * 399_000
    assert (await client.upload(record_id, video_id, rest, 1000, 400_000)).status == 200
    assert fake.video_bytes(record_id) == b"a" * 1000 + rest
    assert video.sha256 == hashlib.sha256(b"a" * 1000 + rest).hexdigest()


async def test_a_server_that_keeps_no_bytes_still_counts_and_hashes_them(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with FakeValt(tmp_path / "valt", keep_bytes=False) as valt:
        client = Client(session, valt.url)
        await client.login()
        record_id, video_id = await client.create()
        data = payload(5000)
        assert (await client.upload(record_id, video_id, data, 0, len(data))).status == 200
        video = valt.records[record_id].videos[0]
        assert video.path is None
        assert (video.received, video.status) == (5000, "ready")
        assert video.sha256 == hashlib.sha256(data).hexdigest()
        assert list((tmp_path / "valt").iterdir()) == []
        with pytest.raises(ValueError):
            valt.video_bytes(record_id)


async def test_a_server_that_hashes_nothing_still_counts_bytes_and_holds_the_chunk_rules(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The benchmark's counting server: no sha256, but ranges checked as ever."""
    async with FakeValt(tmp_path / "valt", keep_bytes=False, hash_bytes=False) as valt:
        client = Client(session, valt.url)
        await client.login()
        record_id, video_id = await client.create()
        data = payload(30_000)
        assert (await client.upload(record_id, video_id, data[:10_000], 0, 30_000)).status == 200
        gap = await client.upload(record_id, video_id, data[20_000:], 20_000, 30_000)
        assert gap.status == 400 and "gap" in error_of(gap)[1]
        repeat = await client.upload(record_id, video_id, data[:10_000], 0, 30_000)
        assert (repeat.status, repeat.text) == (200, "")
        await client.upload(record_id, video_id, data[10_000:20_000], 10_000, 30_000)
        done = await client.upload(record_id, video_id, data[20_000:], 20_000, 30_000)
        assert done.json() == {"id": record_id, "videos": [video_id]}
        video = valt.records[record_id].videos[0]
        assert (video.received, video.total, video.sha256) == (30_000, 30_000, None)
        assert valt.snapshot()["records"][0]["videos"][0]["sha256"] is None
        assert valt.upload_bytes_received == 30_000 + 10_000 + 10_000  # gap and repeat counted
        assert valt.chunk_repeats == 1


async def test_videos_turn_ready_after_ready_delay(fake: FakeValt, client: Client) -> None:
    fake.set_faults(ready_delay=0.4)
    record_id, video_id = await client.create()
    await client.upload(record_id, video_id, b"x" * 100, 0, 200)
    partial = (await client.record(record_id)).json()["data"]["videos"]
    assert partial == [{"id": video_id, "status": {"type": "created"}}]
    await client.upload(record_id, video_id, b"y" * 100, 100, 200)
    done = (await client.record(record_id)).json()["data"]["videos"]
    assert done[0]["status"] == {"type": "created"}
    await asyncio.sleep(0.5)
    ready = (await client.record(record_id)).json()["data"]["videos"]
    assert ready[0]["status"] == {"type": "ready"}
    assert fake.snapshot()["records"][0]["videos"][0]["status"] == "ready"


async def test_no_chunking_takes_the_first_request_as_the_whole_video(
    fake: FakeValt, client: Client
) -> None:
    fake.set_faults(no_chunking=True)
    data = payload(20_000)
    record_id, video_id = await client.create()
    first = await client.upload(record_id, video_id, data[:10_000], 0, len(data))
    assert first.json() == {"id": record_id, "videos": [video_id]}
    second = await client.upload(record_id, video_id, data[10_000:], 10_000, len(data))
    assert error_of(second) == (400, "Video already uploaded")
    video = fake.records[record_id].videos[0]
    assert (video.total, video.received, video.status) == (10_000, 10_000, "ready")
    assert fake.video_bytes(record_id) == data[:10_000]

    whole_id, whole_video = await client.create()
    whole = await client.upload(whole_id, whole_video, data, 0, len(data))
    assert whole.status == 200
    assert fake.video_bytes(whole_id) == data
    assert fake.faults_injected["no_chunking"] == 1


# --- faults -------------------------------------------------------------------------


async def test_a_body_over_max_body_gets_nginx_413_and_nothing_is_stored(
    fake: FakeValt, client: Client
) -> None:
    record_id, video_id = await client.create()
    fake.set_faults(max_body=50_000)
    big = payload(400_000)
    answer = await client.upload(record_id, video_id, big, 0, len(big))
    assert (answer.status, answer.text, answer.content_type) == (413, NGINX_413, "text/html")
    small = await client.upload(record_id, video_id, big[:40_000], 0, len(big))
    assert small.status == 200
    assert fake.records[record_id].videos[0].received == 40_000
    assert fake.faults_injected["max_body"] == 1


async def test_fail_rate_gives_500s_with_html_and_json_bodies_and_stores_nothing(
    fake: FakeValt, client: Client
) -> None:
    record_id, video_id = await client.create()
    fake.set_faults(fail_rate=1.0)
    answers = [await client.upload(record_id, video_id, b"z" * 5000, 0, 5000) for _ in range(4)]
    assert {a.status for a in answers} == {500}
    assert {a.content_type for a in answers} == {"text/html", "application/json"}
    html = next(a for a in answers if a.content_type == "text/html")
    assert "500 Internal Server Error" in html.text
    as_json = next(a for a in answers if a.content_type == "application/json")
    assert error_of(as_json) == (500, "Internal Server Error")
    assert fake.records[record_id].videos[0].received == 0
    assert fake.upload_bytes_received == 0
    assert fake.faults_injected["fail"] == 4
    assert [entry.status for entry in fake.request_log[-4:]] == [500] * 4


async def test_bad_gateway_rate_gives_nginx_502(fake: FakeValt, client: Client) -> None:
    fake.set_faults(bad_gateway_rate=1.0)
    answer = await client.call("GET", "admin/general")
    assert (answer.status, answer.content_type) == (502, "text/html")
    assert "502 Bad Gateway" in answer.text


async def test_drop_rate_cuts_the_connection_and_stores_nothing(
    fake: FakeValt, client: Client
) -> None:
    record_id, video_id = await client.create()
    fake.set_faults(drop_rate=1.0)
    data = payload(200_000)
    with pytest.raises(aiohttp.ClientError):
        await client.upload(record_id, video_id, data, 0, len(data))
    assert fake.records[record_id].videos[0].received == 0
    assert fake.request_log[-1].status == 0
    assert fake.faults_injected["drop"] == 1
    # Only uploads are dropped.
    assert (await client.call("GET", "admin/general")).status == 200


async def test_hang_rate_never_answers(fake: FakeValt, client: Client) -> None:
    fake.set_faults(hang_rate=1.0)
    with pytest.raises(asyncio.TimeoutError):
        await client.call("GET", "admin/general", timeout=aiohttp.ClientTimeout(sock_read=0.3))
    assert fake.faults_injected["hang"] == 1


async def test_stop_lets_go_of_hung_requests(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    valt = FakeValt(tmp_path, faults=Faults(hang_rate=1.0))
    await valt.start()
    hung = asyncio.create_task(Client(session, valt.url).call("GET", "admin/general"))
    await eventually(lambda: valt.faults_injected.get("hang") == 1)
    started = time.monotonic()
    await valt.stop()
    with pytest.raises(aiohttp.ClientError):
        await hung
    assert time.monotonic() - started < 3


async def test_slow_rate_delays_the_answer(fake: FakeValt, client: Client) -> None:
    fake.set_faults(slow_rate=1.0, slow_seconds=0.3)
    started = time.monotonic()
    assert (await client.call("GET", "admin/general")).status == 200
    assert time.monotonic() - started >= 0.3


async def test_not_json_rate_answers_ok_text_but_the_call_takes_effect(
    fake: FakeValt, client: Client
) -> None:
    fake.set_faults(not_json_rate=1.0)
    answer = await client.call("POST", "records/create-upload", json={"name": "Lost answer"})
    assert (answer.status, answer.text, answer.content_type) == (200, "OK", "text/html")
    assert [r.name for r in fake.records.values()] == ["Lost answer"]
    assert (await client.call("GET", "admin/general")).status == 200  # not a target


async def test_the_same_seed_replays_the_same_faults(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async def statuses(seed: int) -> list[int]:
        async with FakeValt(tmp_path / str(seed), faults=Faults(fail_rate=0.5, seed=7)) as valt:
            client = Client(session, valt.url)
            answers = [await client.call("GET", "admin/general", token="x") for _ in range(20)]
            return [a.status for a in answers]

    first = await statuses(1)
    assert set(first) == {500, 401}
    assert await statuses(2) == first


# --- two senders on one video -------------------------------------------------------


@dataclass
class SlowChunk:
    """A chunk request sent by hand: the head and part of the body now, the rest later."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    rest: bytes

    async def finish(self) -> int:
        """Send the rest of the body; the answer's status."""
        self.writer.write(self.rest)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        self.writer.close()
        await self.writer.wait_closed()
        return status


async def start_slow_chunk(
    fake: FakeValt,
    client: Client,
    record_id: str,
    video_id: str,
    data: bytes,
    start: int,
    total: int,
) -> SlowChunk:
    host, port = fake.url.removeprefix("http://").split(":")
    boundary = "slow-chunk-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="clip.mp4"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /api/v3/records/{record_id}/videos/{video_id}?access_token={client.token} "
        f"HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Content-Range: bytes {start}-{start + len(data) - 1}/{total}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    half = len(body) // 2
    writer.write(head + body[:half])
    await writer.drain()
    return SlowChunk(reader, writer, body[half:])


async def test_two_chunks_of_one_video_in_flight_at_once_count_as_an_overlap(
    fake: FakeValt, client: Client
) -> None:
    data = payload(20_000)
    record_id, video_id = await client.create()
    other_id, other_video = await client.create("Other")
    first = await start_slow_chunk(fake, client, record_id, video_id, data[:10_000], 0, 20_000)
    await eventually(lambda: fake.upload_bytes_received > 0)  # the first is being read
    # Another video's chunk meanwhile is no overlap.
    assert (await client.upload(other_id, other_video, data, 0, len(data))).status == 200
    assert fake.overlapping_chunks == 0
    second = await start_slow_chunk(
        fake, client, record_id, video_id, data[10_000:], 10_000, 20_000
    )
    await eventually(lambda: fake.overlapping_chunks == 1)
    assert await first.finish() == 200
    assert await second.finish() == 200  # it waited for the first, then continued it
    assert fake.video_bytes(record_id) == data
    assert fake.overlapping_records == [record_id]
    snapshot = fake.snapshot()
    assert (snapshot["overlapping_chunks"], snapshot["overlapping_records"]) == (1, [record_id])
    assert fake.state.chunks_in_flight == {}


async def test_chunks_of_one_video_one_after_another_are_no_overlap(
    fake: FakeValt, client: Client
) -> None:
    data = payload(30_000)
    record_id, video_id = await client.create()
    slow = await start_slow_chunk(fake, client, record_id, video_id, data[:10_000], 0, 30_000)
    assert await slow.finish() == 200
    for start in (10_000, 20_000):
        chunk = data[start : start + 10_000]
        assert (await client.upload(record_id, video_id, chunk, start, len(data))).status == 200
    assert fake.video_bytes(record_id) == data
    assert (fake.overlapping_chunks, fake.overlapping_records) == (0, [])


def test_a_daemon_uploading_several_files_at_once_never_overlaps_chunks(
    tmp_path: Path, server: FakeValtThread
) -> None:
    export = tmp_path / "export"
    for n in range(3):
        random_file(export / f"clip-{n}.mp4", 1024 * KiB + 1 + n, seed=n)
    config = write_config(tmp_path, server.url, upload={"workers": 2, "chunk_size": "256KiB"})
    assert run_once(config, "20s").returncode == 0
    snapshot = server.snapshot()
    assert len(snapshot["records"]) == 3
    assert snapshot["requests"][UPLOAD_ROUTE] >= 3 * 5  # five chunks a file, two files at once
    assert (snapshot["overlapping_chunks"], snapshot["overlapping_records"]) == (0, [])


# --- inspection, threads and the command line ----------------------------------------


async def test_fake_endpoints_show_state_and_steer_faults(
    fake: FakeValt, client: Client, session: aiohttp.ClientSession
) -> None:
    record_id, _ = await client.create("Seen")
    async with session.post(f"{fake.url}/_fake/faults", json={"fail_rate": 1}) as response:
        assert response.status == 200
        assert (await response.json())["fail_rate"] == 1.0
    async with session.post(f"{fake.url}/_fake/faults", json={"nonsense": 1}) as response:
        assert response.status == 400
    async with session.post(f"{fake.url}/_fake/seed", json={"name": "Elsewhere"}) as response:
        seeded = (await response.json())["id"]
    # /_fake is never faulted and never counted.
    async with session.get(f"{fake.url}/_fake/state") as response:
        assert response.status == 200
        state = await response.json()
    assert fake.faults.fail_rate == 1.0
    assert [r["id"] for r in state["records"]] == [record_id, seeded]
    assert state["records"][1]["author"] == "other-machine"
    assert state["records"][0]["videos"][0]["received"] == 0
    assert state["requests"] == {
        "POST /api/v3/login": 1,
        "POST /api/v3/records/create-upload": 1,
    }
    assert set(state) >= {
        "records",
        "deleted",
        "requests",
        "upload_bytes_received",
        "faults_injected",
        "logins",
        "login_failures",
    }
    assert state == json.loads(json.dumps(fake.snapshot()))


def test_fake_valt_thread_serves_synchronous_code(tmp_path: Path) -> None:
    with FakeValtThread(tmp_path, faults=Faults(token_ttl=5)) as fake:
        request = urllib.request.Request(
            f"{fake.url}/api/v3/login",
            data=b'{"username": "ingest", "password": "secret"}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["data"]["access_token"]
        fake.set_faults(admin_forbidden=True)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{fake.url}/api/v3/admin/general", timeout=5)
        refused.value.close()
        assert refused.value.code == 401
        record_id = fake.seed_record("From a thread", with_video=True)
        snapshot = fake.snapshot()
        assert snapshot["logins"] == 1
        assert snapshot["faults"]["admin_forbidden"] is True
        assert snapshot["records"][0]["id"] == record_id
        assert fake.video_bytes(record_id)
    assert fake.snapshot()["records"][0]["videos"][0]["status"] == "ready"  # after stop too


async def test_cli_prints_its_url_and_serves_until_sigterm(tmp_path: Path) -> None:
    code = (
        "import argparse, sys\n"
        "from ingestd.commands.fake_valt import add_arguments\n"
        "from ingestd.fake_valt.cli import run_from_args\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run_from_args(parser.parse_args(sys.argv[1:])))\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--data",
        str(tmp_path),
        "--user",
        "cli:pw",
        "--fail-rate",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode()
        match = re.fullmatch(r"fake-valt listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        assert int(match.group(2)) > 0
        async with aiohttp.ClientSession() as http:
            client = Client(http, match.group(1))
            assert (await client.login("cli", "pw")).status == 200
            assert (await client.call("GET", "admin/general")).status == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert client.token not in (line + stdout.decode() + stderr.decode())


async def test_issued_tokens_include_expired_ones(fake: FakeValt, client: Client) -> None:
    first = client.token
    fake.set_faults(token_ttl=1)
    assert (await client.call("GET", "admin/general")).status == 200
    assert (await client.call("GET", "admin/general")).status == 401
    await client.login()
    assert fake.state.accounts.issued_tokens() == {first, client.token}
