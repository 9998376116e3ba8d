"""Every server problem is one line naming what is wrong and what to do; loopback only.

Each case is a real server (or a port nobody listens on), met by ``ingestd check``:
connection refused, no answer, an https URL on an http server, a certificate
made out to another name, an expired one, one from an unknown CA, and a server
that is not Valt (404, 501 on ``POST login``). ``check`` prints its table and
nothing else: no raw aiohttp text, no JSON log line. The daemon's ``upload.retry``
lines carry the same short text.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import (
    PASSWORD,
    USERNAME,
    assert_no_event,
    free_port,
    ingestd_env,
    log_events,
    random_file,
    run_cli,
    write_config,
)

from ingestd.fake_valt import FakeValtThread
from tests.support import make_test_ca, openssl

EXTENSIONS = """\
subjectAltName = {san}
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid, issuer
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and three server certificates it signs: for 127.0.0.1, for another name, and
    one for 127.0.0.1 that has expired (openssl CLI: the venv has no ``cryptography``)."""
    folder = tmp_path_factory.mktemp("pki")
    make_test_ca(folder, "server")
    # -days -1: valid until yesterday (openssl 3.0 has no -not_after).
    for name, san, days in (
        ("good", "IP:127.0.0.1", "2"),
        ("other-name", "DNS:valt.example.org", "2"),
        ("expired", "IP:127.0.0.1", "-1"),
    ):
        (folder / f"{name}.ext").write_text(EXTENSIONS.format(san=san))
        openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", days, "-extfile", f"{name}.ext",
            cwd=folder,
        )  # fmt: skip
    return folder


def _tls_server(tmp_path: Path, certs: Path, name: str) -> FakeValtThread:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / f"{name}.pem", certs / "server.key")
    return FakeValtThread(tmp_path / "server", users={USERNAME: PASSWORD}, ssl_context=context)


def _check(tmp_path: Path, url: str, **valt: object) -> tuple[str, str]:
    """``ingestd check``'s one FAIL line about the server, and all it printed."""
    (tmp_path / "export").mkdir(exist_ok=True)
    config = write_config(tmp_path, url, valt={"timeout": "2s", **valt})
    result = run_cli("check", "-c", str(config))
    printed = result.stdout + result.stderr
    assert result.returncode == 1, printed
    lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL  server")]
    assert len(lines) == 1, printed
    _table_only(result)
    return lines[0], printed


def _table_only(result: subprocess.CompletedProcess[str]) -> None:
    """Nothing but the table: no log line, no aiohttp class or raw text."""
    printed = result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    for line in result.stdout.splitlines():
        assert line[:6] in ("ok    ", "FAIL  ", "warn  ", "skip  "), line
    for raw in ("ClientConnector", "ssl:default", "Connect call failed", "_ssl.c"):
        assert raw not in printed, printed


def test_connection_refused_names_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    line, _ = _check(tmp_path, f"http://127.0.0.1:{port}")
    assert f"nothing answers at 127.0.0.1:{port} (connection refused)" in line, line
    assert "is the Valt server running" in line and "valt.url" in line, line


def test_a_server_that_never_answers_names_valt_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # takes the connection (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        line, _ = _check(tmp_path, f"http://127.0.0.1:{port}", timeout="1s")
    assert "did not answer within 1 s (valt.timeout)" in line, line


def test_https_url_on_an_http_server(tmp_path: Path, server: FakeValtThread) -> None:
    url = server.url.replace("http://", "https://")
    line, _ = _check(tmp_path, url)
    port = url.rsplit(":", 1)[1]
    assert f"valt.url says https://, but 127.0.0.1:{port} answers plain http" in line, line
    assert "write http://" in line, line


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("good", ["not trusted", "a CA this machine does not know", "valt.ca_file"]),
        ("other-name", ["not made out to 127.0.0.1 (hostname mismatch)", "set valt.url"]),
        ("expired", ["certificate has expired", "renew it on the server"]),
    ],
    ids=["unknown-ca", "hostname-mismatch", "expired"],
)
def test_each_certificate_problem_has_its_own_line(
    tmp_path: Path, certs: Path, name: str, needles: list[str]
) -> None:
    # The unknown CA is met without ca_file; the other two with the CA trusted.
    ca_file = {} if name == "good" else {"ca_file": str(certs / "ca.pem")}
    with _tls_server(tmp_path, certs, name) as fake:
        line, _ = _check(tmp_path, fake.url, **ca_file)
        assert fake.snapshot()["requests"] == {}  # not a byte past the handshake
    for needle in needles:
        assert needle in line, line


class _NoPost(BaseHTTPRequestHandler):
    """Another web server, without POST: http.server answers 501 Unsupported method."""

    def log_message(self, *_args: object) -> None:
        pass


class _NotValt(_NoPost):
    """Another web server: 404 for every POST."""

    def do_POST(self) -> None:
        self.send_error(404)


@pytest.fixture
def other_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("handler", "status"), [(_NotValt, "404 Not Found"), (_NoPost, "501 Not Implemented")]
)
def test_a_server_that_is_not_valt(
    tmp_path: Path,
    other_server: Callable[[type[BaseHTTPRequestHandler]], str],
    handler: type[BaseHTTPRequestHandler],
    status: str,
) -> None:
    url = other_server(handler)
    line, _ = _check(tmp_path, url)
    assert f"answered {status}: the server was reached, but it is probably not Valt" in line
    assert "or valt.url is not its base address" in line, line


def test_refused_credentials_print_no_log_line_inside_the_table(
    tmp_path: Path, server: FakeValtThread
) -> None:
    (tmp_path / "export").mkdir()
    config = write_config(tmp_path, server.url)
    result = run_cli("check", "-c", str(config), env=ingestd_env(INGESTD_VALT_PASSWORD="nope"))
    assert result.returncode == 1
    assert "FAIL  credentials" in result.stdout
    _table_only(result)


def test_the_outage_line_carries_the_same_short_text(tmp_path: Path) -> None:
    """Nothing answers at all: an outage, no attempt counts (no ``upload.retry``), and
    ``server.unreachable`` carries the same one line as ``check``."""
    port = free_port()
    random_file(tmp_path / "export" / "clip.mp4", 1000)
    config = write_config(
        tmp_path, f"http://127.0.0.1:{port}", watch={"settle": "0.1s"}, upload={"max_attempts": 3}
    )
    ran = run_cli("run", "-c", str(config), "--once", "--max-wait", "3s")
    log = tmp_path / "run.log"
    log.write_text(ran.stdout)
    errors = {e["error"] for e in log_events(log) if e["event"] == "server.unreachable"}
    assert_no_event(log_events(log), "upload.retry")  # nothing answers: no attempt counts
    expected = (
        f"POST login: nothing answers at 127.0.0.1:{port} (connection refused): "
        "is the Valt server running, and are the host and port in valt.url right?"
    )
    assert errors == {expected}, errors
