"""A server that quotes the request URL (token and all) in its error answers.

The fake's ``quote_url`` mode answers every error with ``No route for METHOD
<full URL>`` (and ``login``'s with the body it was sent, password and all).
The client scrubs server text where it becomes an exception, so no output
path can show it: each call's message, then every place a person or a
program reads: the ledger (``fail_detail``, the deletions queue's
``last_error``), ``status`` and ``status --json``, the ``--once`` lines,
``NAME.error.txt`` and ``check``.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import (
    PASSWORD,
    REPO,
    USERNAME,
    KiB,
    ingestd_env,
    ledger_rows,
    random_file,
    run_cli,
    run_once,
    write_config,
)

from ingestd.config.load import load_config
from ingestd.errors import ValtError
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.ledger.store import SqliteLedger
from ingestd.logs import secrets_in
from ingestd.upload.confirm import PartialSweeper
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import ValtClient

SHORT_PASSWORD = "Zq9"  # under 4 characters: too short to be scrubbed from every line


def _client(server: FakeValtThread, password: str = PASSWORD) -> ValtClient:
    return ValtClient(base_url=server.url, username=USERNAME, password=password, timeout=5.0)


async def _one_piece() -> AsyncIterator[bytes]:
    yield b"x"


def _clean(text: str, tokens: set[str], passwords: list[str]) -> None:
    assert "access_token" not in text, text
    assert secrets_in(text, sorted(tokens)) == [], text
    assert secrets_in(text, passwords) == [], text


async def test_every_call_scrubs_the_url_a_server_quotes(server: FakeValtThread) -> None:
    async with _client(server) as client:
        created = await client.create_upload("Room 1", {}, {})
        server.set_faults(quote_url=True, fail_rate=1.0)
        calls = {
            "create": lambda: client.create_upload("Room 2", {}, {}),
            "chunk": lambda: client.upload_chunk(
                created.record_id,
                created.video_id,
                filename="a.mp4",
                content_range=valt_rules.content_range(0, 1, 1),
                length=1,
                pieces=_one_piece,
            ),
            "record": lambda: client.get_record(created.record_id),
            "search": lambda: client.search_records("Room", 0.0),
            "delete": lambda: client.delete_record(created.record_id),
            "admin": lambda: client.server_version(),
            "admin users": lambda: client.admin_list("users"),
            "admin template": lambda: client.get_template(1),
        }
        messages = {}
        for name, call in calls.items():
            with pytest.raises(ValtError) as caught:
                await call()
            messages[name] = str(caught.value)
    tokens = server.call(lambda fake: fake.state.accounts.issued_tokens())
    assert tokens
    for name, message in messages.items():
        # The server's words are there (not vacuous), the token is not.
        assert "No route for" in message, (name, message)
        assert "[query redacted]" in message, (name, message)
        _clean(message, tokens, [PASSWORD])


async def test_login_answer_is_never_quoted(tmp_path: Path) -> None:
    """A password too short to scrub from every line cannot leak through login's answer."""
    users = {USERNAME: SHORT_PASSWORD}
    faults = Faults(quote_url=True)
    with FakeValtThread(tmp_path / "server", users=users, faults=faults) as server:
        messages = []
        for password, changes in (
            ("wrong", {}),  # 401, its body quoting the password sent
            (SHORT_PASSWORD, {"fail_rate": 1.0}),  # 500, likewise
            (SHORT_PASSWORD, {"fail_rate": 0.0, "refuse_names": ["x"], "max_body": 1}),  # 413
        ):
            server.set_faults(**changes)
            async with _client(server, password) as client:
                with pytest.raises(ValtError) as caught:
                    await client.login()
                messages.append(str(caught.value))
    assert SHORT_PASSWORD not in "".join(messages)
    assert not any("No route" in message for message in messages), messages


def test_no_output_path_shows_a_quoted_token(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """The case reported: create-upload answered 400 with the full URL; then every reader."""
    random_file(export / "Room 3.mp4", 64 * KiB)
    failed_to = tmp_path / "failed"
    config = write_config(
        tmp_path,
        server.url,
        after_upload={"failed_to": str(failed_to)},
        log={"level": "debug"},
    )
    probe = f"ingestd probe from {socket.gethostname()} (safe to delete)"
    server.set_faults(quote_url=True, refuse_names=["Room 3", probe])
    ran = run_once(config, "10s")
    assert ran.returncode == 1, ran.stderr[-3000:]
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "failed"
    assert "No route for POST" in row["fail_detail"]
    assert "not done:" in ran.stderr and "No route for POST" in ran.stderr
    [error_txt] = failed_to.rglob("*.error.txt")
    assert "No route for POST" in error_txt.read_text()

    # A queued deletion whose delete the server refuses, quoting the URL.
    _queue_refused_deletion(config, server)
    status = run_cli("status", "-c", str(config))
    status_json = run_cli("status", "--json", "-c", str(config))
    assert status.returncode == 0 and status_json.returncode == 0
    assert "No route for POST" in status.stdout and "No route for POST" in status_json.stdout
    checked = run_cli("check", "--probe-upload", "-c", str(config))  # the probe's create: 400
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "No route for POST" in checked.stdout + checked.stderr

    ledger_bytes = b"".join(
        part.read_bytes()
        for suffix in ("", "-wal")
        if (part := tmp_path / f"ledger.db{suffix}").exists()
    )
    assert b"No route for POST" in ledger_bytes
    text = "\n".join(
        [
            ran.stdout,
            ran.stderr,
            status.stdout,
            status_json.stdout,
            checked.stdout,
            checked.stderr,
            error_txt.read_text(),
            ledger_bytes.decode("latin-1"),
        ]
    )
    tokens = server.call(lambda fake: fake.state.accounts.issued_tokens())
    assert len(tokens) >= 3  # the run's, the sweep's and check's
    _clean(text, tokens, [PASSWORD])


def _queue_refused_deletion(config: Path, server: FakeValtThread) -> None:
    """The sweeper (in this process, a fresh client) meets a quoting 500 on a delete."""

    async def sweep() -> None:
        loaded = load_config(config)
        ledger = await SqliteLedger.open(loaded.ledger.path)
        try:
            await ledger.queue_deletion("no-such-record", None, "test")
            async with _client(server) as client:
                await client.login()
                server.set_faults(fail_rate=1.0)
                await PartialSweeper(upload=loaded.upload, ledger=ledger, client=client).sweep()
                server.set_faults(fail_rate=0.0)
        finally:
            await ledger.close()

    asyncio.run(sweep())
    with sqlite3.connect(load_config(config).ledger.path) as db:
        [(last_error,)] = db.execute("SELECT last_error FROM deletions").fetchall()
    assert "No route for POST" in last_error


def test_cli_catch_all_prints_one_scrubbed_line(tmp_path: Path) -> None:
    """A bug's exception: one line, exit 1, no traceback; at debug level a scrubbed one."""
    token = "e82632d19c523678fea3d1016c6df9e9"
    script = (
        "import sys\n"
        "from ingestd.commands import main as cli\n"
        "from ingestd.logs import register_secret, configure_logging\n"
        f"register_secret({token!r}, token=True)\n"
        "if sys.argv[1] == 'debug':\n"
        "    configure_logging(fmt='json', level='debug')\n"
        "def boom(args):\n"
        f"    raise RuntimeError('GET http://valt/api/v3/x?access_token={token} failed')\n"
        "cli.dispatch = boom\n"
        "cli.main(['status'])\n"
    )
    for level in ("info", "debug"):
        result = subprocess.run(
            [sys.executable, "-c", script, level],
            capture_output=True,
            text=True,
            env=ingestd_env(),
            cwd=REPO,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith("ingestd: unexpected error: RuntimeError: GET http://valt/")
        assert token not in result.stderr and "access_token" not in result.stderr
        if level == "info":
            assert len(lines) == 1, result.stderr
        else:
            assert "Traceback" in result.stderr and "boom" in result.stderr
