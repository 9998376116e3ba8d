"""What a listener on the network could take, and how ``check`` and the daemon say so.

- ``http://`` to a host that is not loopback: the password crosses in clear text.
  ``check`` prints a ``warn`` line (exit code unchanged); every start logs
  ``tls.cleartext_password``.
- ``status.listen`` on the network without a token: ``check`` warns.
- ``status.token_file`` (or the credential ``status-token``): read like the Valt
  password's, refused with one line (exit 2) when unreadable, short or not ASCII.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PASSWORD,
    USERNAME,
    log_events,
    run_cli,
    run_once,
    write_config,
)

from ingestd.config.credentials import resolve_status_token
from ingestd.config.network import is_loopback
from ingestd.config.schema import StatusConfig
from ingestd.errors import ConfigError
from ingestd.fake_valt import FakeValtThread, Faults

TOKEN = "0123456789abcdef0123"
CLEARTEXT_EVENT = "tls.cleartext_password"


def _network_address() -> str:
    """This machine's address on its network (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = str(probe.getsockname()[0])
    assert not is_loopback(address), address
    return address


@pytest.fixture
def network_server(tmp_path: Path) -> Iterator[FakeValtThread]:
    """The fake Valt on a non-loopback address, reached over plain http://."""
    with FakeValtThread(
        tmp_path / "server",
        users={USERNAME: PASSWORD},
        faults=Faults(),
        host=_network_address(),
    ) as fake:
        yield fake


def _warn_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("warn ")]


def test_http_to_a_network_host_warns_in_check_and_at_every_start(
    tmp_path: Path, network_server: FakeValtThread
) -> None:
    (tmp_path / "export").mkdir()
    assert network_server.url.startswith("http://") and "127.0.0.1" not in network_server.url
    config = write_config(tmp_path, network_server.url)
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stdout  # a warning leaves the exit code alone
    assert any("clear text" in line and "valt.url" in line for line in _warn_lines(result.stdout))
    started = run_once(config, "1s")
    assert started.returncode == 0, started.stderr
    log_file = tmp_path / "run.log"
    log_file.write_text(started.stdout)
    assert [event["event"] for event in log_events(log_file)].count(CLEARTEXT_EVENT) == 1


def test_http_to_loopback_does_not_warn(tmp_path: Path, server: FakeValtThread) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, server.url)  # http://127.0.0.1:PORT
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stdout
    assert _warn_lines(result.stdout) == []
    started = run_once(config, "1s")
    log_file = tmp_path / "run.log"
    log_file.write_text(started.stdout)
    assert CLEARTEXT_EVENT not in {event["event"] for event in log_events(log_file)}


def test_check_warns_when_the_status_port_is_on_the_network_without_a_token(
    tmp_path: Path, server: FakeValtThread
) -> None:
    (tmp_path / "export").mkdir()
    exposed = write_config(tmp_path, server.url, status={"listen": "0.0.0.0:9465"})
    result = run_cli("check", "-c", str(exposed))
    assert result.returncode == 0, result.stdout
    assert [line for line in _warn_lines(result.stdout) if "status.listen" in line], result.stdout
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    guarded = write_config(
        tmp_path, server.url, status={"listen": "0.0.0.0:9465", "token_file": str(token_file)}
    )
    result = run_cli("check", "-c", str(guarded))
    assert result.returncode == 0, result.stdout
    assert _warn_lines(result.stdout) == []
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["status.token_file", "cannot read"]),
        ("\n", ["status.token_file", "is empty"]),
        ("short-token\n", ["status.token_file", "11 characters", "at least 16"]),
        ("has a space in it, sixteen+\n", ["status.token_file", "printable ASCII"]),
        ("jeton-très-secret-123\n", ["status.token_file", "printable ASCII"]),
    ],
    ids=["missing", "empty", "short", "space", "not-ascii"],
)
def test_a_bad_token_file_is_one_line_and_exit_2(
    tmp_path: Path, content: str | None, needles: list[str]
) -> None:
    (tmp_path / "export").mkdir()
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    config = write_config(tmp_path, "http://127.0.0.1:9", status={"token_file": str(token_file)})
    # Both commands read it with the same function: one case of check is enough.
    commands = [["run", "--once"], *([["check"]] if content is None else [])]
    for command in commands:
        result = run_cli(command[0], "-c", str(config), *command[1:])
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        for needle in needles:
            assert needle in lines[0], lines[0]
        if content and content.strip():
            assert content.strip() not in result.stderr


def test_the_systemd_credential_comes_before_token_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token_file = tmp_path / "token"
    token_file.write_text("from-the-token-file-1234\n")
    status = StatusConfig(token_file=token_file)
    assert resolve_status_token(status, {}) == "from-the-token-file-1234"
    assert resolve_status_token(StatusConfig(), {"CREDENTIALS_DIRECTORY": str(credentials)}) is None
    (credentials / "status-token").write_text("from-the-credential-1234")
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert resolve_status_token(status, environ) == "from-the-credential-1234"
    assert resolve_status_token(StatusConfig(), environ) == "from-the-credential-1234"
    (credentials / "status-token").write_text("tiny")
    with pytest.raises(ConfigError, match="4 characters"):
        resolve_status_token(StatusConfig(), environ)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("valt.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
