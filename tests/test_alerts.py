"""Webhook alerts (``alerts.webhook``) from the daemon as a real process to a loopback receiver."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    KiB,
    free_port,
    ingestd_env,
    job_states,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread

HOOK_SECRET = "T0ps3cret-hook-token"


class Receiver:
    """An aiohttp webhook receiver in its own thread; keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = 0
        self._lock = threading.Lock()
        self._started: Future[None] = Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{HOOK_SECRET}"

    def messages(self, event: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [body for body in self.bodies if event is None or body["event"] == event]

    async def _take(self, request: web.Request) -> web.Response:
        if request.match_info["secret"] != HOOK_SECRET:
            return web.Response(status=404)
        body = await request.json()
        with self._lock:
            self.bodies.append(body)
        return web.Response(status=204)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_post("/hooks/{secret}", self._take)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as hook:
        yield hook


def _alerts(receiver: Receiver, **alerts: object) -> dict[str, object]:
    return {"webhook": receiver.url, **alerts}


def test_a_permanent_failure_after_retries_sends_one_message(
    tmp_path: Path, server: FakeValtThread, export: Path, receiver: Receiver
) -> None:
    clip = export / "clip.mp4"
    random_file(clip, 100 * KiB)
    server.set_faults(fail_names=["clip"])  # its create-upload 500s: retried, then given up
    config = write_config(
        tmp_path, server.url, upload={"max_attempts": 3}, alerts=_alerts(receiver)
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: receiver.messages("job.failed"), timeout=30)
        time.sleep(2.5)  # time for a duplicate to arrive, were one sent
    finally:
        assert stop_process(daemon) == 0
    [message] = receiver.messages()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "failed"
    assert message["event"] == "job.failed" and message["job_id"] == row["id"]
    assert message["reason"] == row["fail_reason"] == "http_500"
    assert message["path"] == str(clip) and "clip.mp4" in message["summary"]
    assert message["host"] and "gave up after 3 attempts" in message["detail"]
    events = log_events(log)
    assert len([e for e in events if e["event"] == "upload.retry"]) == 2
    assert [e["alert"] for e in events if e["event"] == "alert.sent"] == ["job.failed"]
    assert HOOK_SECRET not in log.read_text()  # the webhook URL is never logged


def test_refused_credentials_send_one_message(
    tmp_path: Path, server: FakeValtThread, export: Path, receiver: Receiver
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    config = write_config(tmp_path, server.url, alerts=_alerts(receiver))
    env = ingestd_env(INGESTD_VALT_PASSWORD="not-the-password")
    daemon = start_daemon(config, tmp_path / "daemon.log", env)
    try:
        wait_for(lambda: receiver.messages("auth.failed"), timeout=30)
        time.sleep(5)  # several health ticks while the credentials stay refused
    finally:
        assert stop_process(daemon) == 0
    [message] = receiver.messages()
    assert message["event"] == "auth.failed" and "credentials" in message["summary"]
    assert server.snapshot()["login_failures"] == 1  # the daemon did not hammer the login


def test_run_once_sends_its_alert_before_it_exits(
    tmp_path: Path, server: FakeValtThread, export: Path, receiver: Receiver
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    config = write_config(tmp_path, server.url, alerts=_alerts(receiver))
    env = ingestd_env(INGESTD_VALT_PASSWORD="not-the-password")
    done = run_cli("run", "-c", str(config), "--once", env=env)
    assert done.returncode == 1, done.stderr
    assert [message["event"] for message in receiver.messages()] == ["auth.failed"]


def test_an_old_backlog_sends_one_message_and_redacted_payloads_name_no_path(
    tmp_path: Path, server: FakeValtThread, export: Path, receiver: Receiver
) -> None:
    stuck = export / "Jane Doe interview.mp4"  # never finished: its marker is not written
    random_file(stuck, 100 * KiB)
    refused = export / "John Roe statement.mp4"
    random_file(refused, 100 * KiB, seed=2)
    (export / "John Roe statement.mp4.done").touch()
    server.set_faults(refuse_names=["John Roe statement"])  # a permanent 400
    config = write_config(
        tmp_path,
        server.url,
        watch={"done_marker": ".done"},
        log={"redact_paths": True},
        alerts=_alerts(receiver, backlog_age="1s"),
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: receiver.messages("backlog.old"), timeout=30)
        wait_for(lambda: receiver.messages("job.failed"), timeout=30)
        time.sleep(3)  # several health ticks while the backlog stays old
        assert len(receiver.messages("backlog.old")) == 1
        (export / "Jane Doe interview.mp4.done").touch()  # now it finishes and uploads
        wait_for(lambda: receiver.messages("backlog.cleared"), timeout=30)
    finally:
        assert stop_process(daemon) == 0
    events = [message["event"] for message in receiver.messages()]
    assert sorted(events) == ["backlog.cleared", "backlog.old", "job.failed"]
    [old] = receiver.messages("backlog.old")
    assert old["files"] in (1, 2) and old["oldest_age_s"] >= 1 and old["path"].startswith("path:")
    [failed] = receiver.messages("job.failed")
    assert failed["path"].startswith("path:") and failed["summary"].startswith("job ")
    payloads = json.dumps(receiver.messages())
    for piece in (str(tmp_path), "Jane", "John", "interview", "statement"):
        assert piece not in payloads


def test_a_dead_receiver_holds_no_upload_and_its_url_is_never_logged(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "refused.mp4", 100 * KiB)
    random_file(export / "fine.mp4", 100 * KiB, seed=3)
    server.set_faults(refuse_names=["refused"])
    dead_hook = f"http://127.0.0.1:{free_port()}/hooks/{HOOK_SECRET}"
    config = write_config(tmp_path, server.url, alerts={"webhook": dead_hook})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(
            lambda: sorted(job_states(tmp_path / "ledger.db").values()) == ["done", "failed"]
        )  # the dead hook held up nothing
    finally:
        assert stop_process(daemon) == 0
    events = log_events(log)
    [failed] = [e for e in events if e["event"] == "alert.failed"]
    assert failed["alert"] == "job.failed"
    text = log.read_text()
    assert HOOK_SECRET not in text and dead_hook.split("/hooks")[0] not in text
