"""What a careful client must do for one large file: curl sends it, openssl hashes it.

curl sends exactly ingestd's chunk requests (same multipart framing,
``Content-Range``, chunk size) from one process on one connection (``--next``,
``-H 'Expect:'``); ``openssl dgst -sha256`` (which uses the CPU's SHA
instructions, unlike Debian's ``sha256sum``) hashes the same file. The pair is
started together, as a client that both sends and hashes would run them.

- Rate: the file's size over the time from curl's first chunk at the server to
  the later of curl's last byte at the server and openssl's exit (openssl is
  launched just before curl, so its own start-up is not counted against it).
- CPU: each tool's user + system CPU (``wait4``) less its start-up, which is what
  the same tool costs for a one-byte file (median of 5), so a constant cost of
  starting a process is not counted as work per GiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Bench, median, wait_record
from bench.procs import Server
from bench.server import PASSWORD, USERNAME
from ingestd.valt import rules as valt_rules
from ingestd.valt.multipart import multipart_frame, new_boundary

STARTUP_SAMPLES = 5


@dataclass
class Exited:
    """A finished process: when it ended (``time.time()``), its CPU, its exit code."""

    at: float
    cpu_s: float
    code: int


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; case 1 compares against it")
    return path


def _login(server: Server) -> str:
    answer = server.post("/api/v3/login", {"username": USERNAME, "password": PASSWORD})
    return str(answer["data"]["access_token"])


def curl_bodies(bench: Bench, source: Path, chunk: int) -> tuple[str, list[Path]]:
    """One multipart body per chunk, framed exactly as ingestd frames it; cached on disk."""
    folder = bench.data.root / f"curl-bodies-{source.name}-{chunk}"
    boundary_file = folder / "boundary"
    size = source.stat().st_size
    count = max(1, (size + chunk - 1) // chunk)
    paths = [folder / f"{index:05d}.body" for index in range(count)]
    if boundary_file.exists() and all(p.exists() for p in paths):
        return boundary_file.read_text(), paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    boundary = new_boundary()
    head, tail = multipart_frame(boundary, source.name)
    with open(source, "rb") as handle:
        for path in paths:
            with open(path, "wb") as body:
                body.write(head + handle.read(chunk) + tail)
    os.sync()
    boundary_file.write_text(boundary)
    return boundary, paths


def curl_command(server: Server, name: str, size: int, chunk: int, bodies: list[Path],
                 boundary: str) -> list[str]:  # fmt: skip
    """A new record ``name`` and the curl command line that fills it, chunk by chunk."""
    token = _login(server)
    created = server.post(f"/api/v3/records/create-upload?access_token={token}", {"name": name})
    record_id, video_id = created["id"], created["videos"][0]
    url = f"{server.url}/api/v3/records/{record_id}/videos/{video_id}?access_token={token}"
    args = [_tool("curl"), "-sS", "--http1.1"]
    for index, body in enumerate(bodies):
        start = index * chunk
        end = min(size, start + chunk)
        if index:
            args.append("--next")
        args += [
            "-X", "POST", "-T", str(body), "-o", "/dev/null", "-w", "%{http_code}\\n",
            "-H", "Expect:",
            "-H", f"Content-Type: multipart/form-data; boundary={boundary}",
            "-H", f"Content-Range: {valt_rules.content_range(start, end, size)}",
            url,
        ]  # fmt: skip
    return args


def _watch(process: subprocess.Popen[bytes], into: dict[str, Exited], key: str) -> None:
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    into[key] = Exited(time.time(), usage.ru_utime + usage.ru_stime, process.returncode)


def _run_together(commands: dict[str, tuple[list[str], Path]]) -> dict[str, Exited]:
    """Start every command at once (in the given order); when each ended and its CPU."""
    exited: dict[str, Exited] = {}
    watchers = []
    for key, (args, out_path) in commands.items():
        with open(out_path, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=_watch, args=(process, exited, key), daemon=True)
        watcher.start()
        watchers.append(watcher)
    for watcher in watchers:
        watcher.join()
    return exited


def _curl_codes(out_path: Path, exited: Exited) -> list[str]:
    output = out_path.read_text(errors="replace")
    codes = output.split()
    if exited.code != 0 or any(code != "200" for code in codes):
        raise RuntimeError(f"curl failed ({exited.code}): {output[:300]}")
    return codes


def _openssl_digest(out_path: Path, exited: Exited) -> str:
    output = out_path.read_text(errors="replace")
    if exited.code != 0:
        raise RuntimeError(f"openssl failed ({exited.code}): {output[:300]}")
    return output.split()[0]  # ``-r``: "HEX *PATH"


def openssl_command(source: Path) -> list[str]:
    return [_tool("openssl"), "dgst", "-sha256", "-r", str(source)]


def send(bench: Bench, server: Server, source: Path, name: str, chunk: int, *,
         digest: str | None) -> dict[str, Any]:  # fmt: skip
    """curl sends ``source`` into a new record ``name``; with ``digest``, openssl hashes
    the same file, started together. Rates and CPU as the module docstring says."""
    size = source.stat().st_size
    boundary, bodies = curl_bodies(bench, source, chunk)
    commands = {}
    out = {key: bench.runs / f"{name}.{key}-out" for key in ("curl", "openssl")}
    if digest is not None:
        commands["openssl"] = (openssl_command(source), out["openssl"])
    commands["curl"] = (curl_command(server, name, size, chunk, bodies, boundary), out["curl"])
    before = server.stats(records=False)
    exited = _run_together(commands)
    codes = _curl_codes(out["curl"], exited["curl"])
    record = wait_record(server, name, size, 30)
    after = server.stats(records=False)
    first = float(record["first_request_at"])
    curl_end = float(record["completed_at"])
    result: dict[str, Any] = {
        "record": record,
        "curl_cpu_s": exited["curl"].cpu_s,
        "curl_seconds": curl_end - first,
        "seconds": curl_end - first,
        "expect_headers": after["expect_headers"] - before["expect_headers"],
        "connections": after["upload_connections"] - before["upload_connections"],
        "requests": len(codes),
    }
    if digest is not None:
        if _openssl_digest(out["openssl"], exited["openssl"]) != digest:
            raise RuntimeError(f"{name}: openssl's sha256 is not the file's")
        result["openssl_cpu_s"] = exited["openssl"].cpu_s
        result["openssl_seconds"] = exited["openssl"].at - first
        result["seconds"] = max(curl_end, exited["openssl"].at) - first
    return result


def startup_costs(bench: Bench, server: Server) -> dict[str, float]:
    """CPU seconds of curl sending a one-byte file in one request, and of openssl hashing
    it: what either tool costs whatever the file (median of STARTUP_SAMPLES)."""
    tiny = bench.runs / "one-byte.ts"
    tiny.write_bytes(b"x")
    boundary = new_boundary()
    head, tail = multipart_frame(boundary, tiny.name)
    body = bench.runs / "one-byte.body"
    body.write_bytes(head + b"x" + tail)
    curl: list[float] = []
    openssl: list[float] = []
    for number in range(STARTUP_SAMPLES):
        name = f"startup-{number}"
        commands = {
            "curl": (curl_command(server, name, 1, 1, [body], boundary), bench.runs / "s.curl"),
        }
        exited = _run_together(commands)
        _curl_codes(bench.runs / "s.curl", exited["curl"])
        curl.append(exited["curl"].cpu_s)
        exited = _run_together({"openssl": (openssl_command(tiny), bench.runs / "s.openssl")})
        _openssl_digest(bench.runs / "s.openssl", exited["openssl"])
        openssl.append(exited["openssl"].cpu_s)
    return {"curl": median(curl), "openssl": median(openssl)}
