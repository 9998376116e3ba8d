"""No redirect is followed: a 3xx would re-send the password (or the token) wherever it points.

The fake's ``redirect_to`` answers every call 307 to another origin, with a
query string in the ``Location``. A second fake stands at that origin: it
must never see a request. A redirect is handled like refused credentials:
server work waits, no job's attempts count, and ``/healthz``, the service
status and ``check`` (exit 1) name ``valt.url`` and where it points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    PASSWORD,
    USERNAME,
    KiB,
    free_port,
    ledger_rows,
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_health import _get, _unhealthy_with

from ingestd.errors import Redirected
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.valt.client import ValtClient


@pytest.fixture
def elsewhere(tmp_path: Path) -> FakeValtThread:
    """The origin the redirect points to: it would accept our password if it were sent."""
    with FakeValtThread(tmp_path / "elsewhere", users={USERNAME: PASSWORD}) as fake:
        yield fake


def _requests(fake: FakeValtThread) -> int:
    return len(fake.snapshot()["requests"])


async def test_login_redirect_is_not_followed(
    server: FakeValtThread, elsewhere: FakeValtThread
) -> None:
    server.set_faults(redirect_to=elsewhere.url)
    async with ValtClient(base_url=server.url, username=USERNAME, password=PASSWORD) as client:
        with pytest.raises(Redirected) as caught:
            await client.login()
        message = str(caught.value)
        assert client.redirect is not None and client.login_blocked_for() > 0
        assert not client.auth_failed
        # Server work waits: the next call is refused here, without a request.
        sent = _requests(server)
        with pytest.raises(Redirected):
            await client.create_upload("Room 1", {}, {})
        assert _requests(server) == sent
    assert elsewhere.snapshot()["logins"] == 0 and _requests(elsewhere) == 0
    assert f"valt.url {server.url} redirects to {elsewhere.url}" in message
    assert "moved" not in message and "session" not in message  # the Location's query


def test_redirect_waits_for_valt_url_and_says_so(
    tmp_path: Path, server: FakeValtThread, elsewhere: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    port = free_port()
    config = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
    server.set_faults(redirect_to=elsewhere.url)

    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    fail = next(line for line in checked.stdout.splitlines() if line.startswith("FAIL"))
    assert f"valt.url {server.url} redirects to {elsewhere.url}" in fail
    assert "moved" not in checked.stdout + checked.stderr

    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        body = _unhealthy_with(port, "redirects to")
        [problem] = [p for p in body["problems"] if "redirects to" in p]
        assert server.url in problem and elsewhere.url in problem and "moved" not in problem
        row = wait_for(lambda: (ledger_rows(tmp_path / "ledger.db") or [None])[0])
        assert row["attempts"] == 0 and row["state"] != "failed"
        assert _get(port, "/healthz")[0] == 503
        # `ingestd status` (another process) says it too, from the ledger.
        status = wait_for(
            lambda: (
                (shown := run_cli("status", "-c", str(config), "--json")).returncode == 0
                and json.loads(shown.stdout)["server_problem"]
            ),
            timeout=15,
        )
        assert f"valt.url {server.url} redirects to {elsewhere.url}" in status["problem"]
        text = run_cli("status", "-c", str(config)).stdout
        assert f"SERVER: valt.url {server.url} redirects to {elsewhere.url}" in text
        assert "moved" not in text
    finally:
        assert stop_process(daemon) == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["attempts"] == 0 and row["fail_reason"] is None
    assert _requests(elsewhere) == 0
    redirected = [
        json.loads(line)
        for line in (tmp_path / "daemon.log").read_text().splitlines()
        if '"valt.redirected"' in line
    ]
    assert redirected and redirected[0]["target"] == elsewhere.url


def test_fake_redirect_option_validates() -> None:
    with pytest.raises(ValueError, match="redirect_to"):
        Faults(redirect_to=307)  # type: ignore[arg-type]
