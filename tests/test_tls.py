"""TLS against a fake Valt server whose certificate comes from a CA the test makes; loopback.

- defaults (``verify_tls: true``, no ``ca_file``) -> ``check`` exits 1 with a
  line naming ``valt.ca_file``; no request reaches the server.
- ``ca_file`` = the test's CA -> ``check`` exits 0; ``run --once`` uploads.
- ``verify_tls: false`` -> uploads, and every start logs the warning
  ``tls.verification_off``; ``check`` exits 1 saying so.
- ``ingestd fake-valt --port 0`` -> prints ``http://127.0.0.1:PORT`` and
  listens on 127.0.0.1 only (``https://`` with ``--tls-cert``/``--tls-key``).
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PASSWORD,
    REPO,
    USERNAME,
    KiB,
    assert_no_event,
    log_events,
    random_file,
    run_cli,
    run_once,
    server_videos,
    write_config,
)

from ingestd.fake_valt import FakeValtThread
from tests.support import make_test_ca, openssl

EXTENSIONS = """\
subjectAltName = IP:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA of our own and a certificate for 127.0.0.1 signed by it (openssl CLI: the
    venv has no ``cryptography``)."""
    folder = tmp_path_factory.mktemp("pki")
    make_test_ca(folder, "127.0.0.1")
    (folder / "server.ext").write_text(EXTENSIONS)
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return Pki(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")


@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[FakeValtThread]:
    with FakeValtThread(
        tmp_path / "server", users={USERNAME: PASSWORD}, ssl_context=pki.server_context()
    ) as fake:
        yield fake


def test_a_self_signed_server_is_refused_unless_ca_file_trusts_its_ca(
    tmp_path: Path, tls_server: FakeValtThread, export: Path, pki: Pki
) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    digest = random_file(export / "clip.mp4", 300 * KiB)

    config = write_config(tmp_path, tls_server.url)
    refused = run_cli("check", "-c", str(config))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = [line for line in refused.stdout.splitlines() if line.startswith("FAIL")]
    assert any("valt.ca_file" in line and "not trusted" in line for line in lines), lines
    assert tls_server.snapshot()["requests"] == {}  # not a byte past the handshake

    config = write_config(tmp_path, tls_server.url, valt={"ca_file": str(pki.ca)})
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = run_once(config, "10s")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert server_videos(tls_server)["clip"]["sha256"] == digest
    assert_no_event(ran.stdout, "tls.verification_off")


def test_verify_tls_off_works_and_warns_at_every_start(
    tmp_path: Path, tls_server: FakeValtThread, export: Path
) -> None:
    config = write_config(tmp_path, tls_server.url, valt={"verify_tls": False})
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 1
    assert "FAIL  valt.verify_tls is false" in checked.stdout
    digests = {}
    for n in range(2):
        digests[f"clip-{n}"] = random_file(export / f"clip-{n}.mp4", 100 * KiB, seed=n)
        log = tmp_path / f"run-{n}.log"
        ran = run_once(config, "10s")
        log.write_text(ran.stdout)
        assert ran.returncode == 0, ran.stderr[-3000:]
        warnings = [e for e in log_events(log) if e["event"] == "tls.verification_off"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    videos = server_videos(tls_server)
    assert {name: video["sha256"] for name, video in videos.items()} == digests


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} show them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # TCP_LISTEN
                found.add(address)
    return found


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_fake_server_binds_loopback_unless_told_otherwise(
    tmp_path: Path, pki: Pki, tls: bool
) -> None:
    extra = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)] if tls else []
    command = [sys.executable, "-m", "ingestd", "fake-valt", "--port", "0", *extra]
    command += ["--data", str(tmp_path / "data")]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            scheme = "https" if tls else "http"
            assert line.startswith(f"fake-valt listening on {scheme}://127.0.0.1:"), line
            port = int(line.rsplit(":", 1)[1])
            assert _listening(port) == {"0100007F"}  # 127.0.0.1, and nothing else
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def _one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (None, ["valt.ca_file", "absent.pem: no such file", "PEM"]),
        (lambda path: path.write_text("not a certificate\n"), ["valt.ca_file", "no certificate"]),
        (lambda path: path.mkdir(), ["valt.ca_file", "is a folder"]),
    ],
    ids=["missing", "not-pem", "folder"],
)
def test_a_ca_file_that_does_not_load_is_a_configuration_error(
    tmp_path: Path, tls_server: FakeValtThread, make: Any, needles: list[str]
) -> None:
    (tmp_path / "export").mkdir()
    ca_file = tmp_path / "absent.pem"
    if make is not None:
        make(ca_file)
    config = write_config(tmp_path, tls_server.url, valt={"ca_file": str(ca_file)})
    _one_line_exit_2(run_cli("check", "-c", str(config)), *needles)
    _one_line_exit_2(run_once(config, "10m"), *needles)
    assert tls_server.snapshot()["records"] == []


def test_a_ca_file_with_verify_tls_false_is_a_contradiction(
    tmp_path: Path, tls_server: FakeValtThread, pki: Pki
) -> None:
    (tmp_path / "export").mkdir()
    valt = {"ca_file": str(pki.ca), "verify_tls": False}
    config = write_config(tmp_path, tls_server.url, valt=valt)
    for command in (["check"], ["run", "--once"]):
        result = run_cli(command[0], "-c", str(config), *command[1:])
        _one_line_exit_2(result, "valt.ca_file", "contradicts valt.verify_tls: false")
