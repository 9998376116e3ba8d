"""What every campaign does around the daemon: the fake server, configs, processes, the ledger.

The crash campaign (``chaos.campaign``), its file-system part (``chaos.chaos_fs``) and the
power-cut campaign (``powercut.campaign``) all start a fake Valt server in their own
process, write a daemon config, start ``python -m ingestd run`` and stop or kill it, read
its ledger from outside and print a Markdown table; this module holds that once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from ingestd.failpoints import ENV_VAR
from ingestd.fake_valt import FakeValtThread, Faults

KiB = 1024
MiB = 1024 * KiB
USERNAME = "ingest"
PASSWORD = "chaos-Pass-w0rd-42"
CLIENT_TIMEOUT = 2.0
"""``valt.timeout``: slow (3 s) and hung answers are longer than this."""

FAULTS: dict[str, Any] = {
    "fail_rate": 0.03,  # 500, every other one an HTML page
    "bad_gateway_rate": 0.01,  # nginx's 502 page
    "drop_rate": 0.03,  # uploads: the connection is cut mid-body
    "slow_rate": 0.01,  # slower than valt.timeout: the client gives up, then the fake drops it
    "slow_seconds": 3.0,
    "hang_rate": 0.003,  # never answered
    "token_ttl": 40,  # tokens expire after 40 uses
    "ready_delay": 1.0,  # "ready" comes a second after the last byte
    "not_json_rate": 0.02,  # create-upload / get-record took effect, the answer is "OK" text
}
"""The crash campaign's faults; the power-cut campaign injects the same."""
LIVE = ("waiting", "queued", "creating", "uploading", "confirming")
"""Job states the daemon is still working on."""
STARTED = b'"daemon.started"'
"""What the daemon's JSON log holds once its signal handlers are set."""


# --- the fake server ------------------------------------------------------------------------


def fake_server(folder: Path, faults: Faults, password: str = PASSWORD) -> FakeValtThread:
    """The fake Valt server, in this process (the daemon's other machine), one user."""
    return FakeValtThread(folder, users={USERNAME: password}, faults=faults)


class ServerEvents:
    """Every record created or deleted on the fake server, in order (from its own thread).

    The daemon must delete a partial record before it makes another for the same
    file: at no moment may one file have two records.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # ("create" | "delete", record id, name)

    def install(self, server: FakeValtThread) -> None:
        def wire(fake: Any) -> None:
            store = fake.state.store
            create, delete = store.create, store.delete

            def logged_create(name: str, **kwargs: Any) -> Any:
                record = create(name, **kwargs)
                self.events.append(("create", record.id, name))
                return record

            def logged_delete(record_id: str) -> bool:
                record = store.records.get(record_id)
                existed = bool(delete(record_id))
                if record is not None and existed:
                    self.events.append(("delete", record_id, record.name))
                return existed

            setattr(store, "create", logged_create)  # noqa: B010 - patching the instance
            setattr(store, "delete", logged_delete)  # noqa: B010

        server.call(wire)

    def overlaps(self) -> dict[str, int]:
        """Name -> the most records it had at one moment, where that was more than one."""
        live: dict[str, set[str]] = {}
        worst: dict[str, int] = {}
        for kind, record_id, name in list(self.events):
            held = live.setdefault(name, set())
            if kind == "create":
                held.add(record_id)
            else:
                held.discard(record_id)
            if len(held) > 1:
                worst[name] = max(worst.get(name, 0), len(held))
        return worst


def whole(video: dict[str, Any]) -> bool:
    """A video on the server holding every byte it announced."""
    return video.get("total") is not None and video.get("received") == video.get("total")


# --- the files ------------------------------------------------------------------------------


class NamedFile:
    """A file the campaign writes under ``relpath``; the server names its record by the stem."""

    relpath: str

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem


def content(seed: int, index: int, version: int, size: int) -> Iterator[bytes]:
    """The seeded bytes of one version of one file, a MiB at a time."""
    rng = random.Random(f"{seed}:{index}:{version}")
    left = size
    while left:
        block = rng.randbytes(min(left, MiB))
        left -= len(block)
        yield block


def random_size(rng: random.Random, max_size: int) -> int:
    """A few bytes to ``max_size``: log-uniform within four bands."""
    roll = rng.random()
    if roll < 0.2:
        low, high = 3, 200
    elif roll < 0.5:
        low, high = 200, 512 * KiB
    elif roll < 0.85:
        low, high = 512 * KiB, 6 * MiB
    else:
        low, high = 6 * MiB, max_size
    high = max(4, min(high, max_size))
    low = min(low, high - 1)
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the ledger, read from outside ------------------------------------------------------------


def ledger_state(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every job row (newest last) and the number of pending deletions."""
    if not path.exists():
        return [], 0
    for _ in range(50):
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        except sqlite3.OperationalError:
            time.sleep(0.1)
            continue
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
            pending = int(conn.execute("SELECT COUNT(*) FROM deletions").fetchone()[0])
            return rows, pending
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [], 0
            time.sleep(0.1)
        finally:
            conn.close()
    raise RuntimeError(f"cannot read the ledger {path}")


def newest_jobs(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Path -> its newest job."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        newest[row["path"]] = row
    return newest


# --- the daemon -------------------------------------------------------------------------------


def write_config(
    path: Path,
    url: str,
    export: Path,
    *,
    settle: str,
    rescan_interval: str,
    upload: dict[str, Any],
    after_upload: dict[str, Any],
    ledger: dict[str, Any],
    name: str | None = None,
) -> None:
    """A daemon config as every campaign writes it: JSON logs, no status page, fast retries.
    ``name``: the watch folder's name (a shared ledger knows files by it)."""
    folder: str | dict[str, str] = {"path": str(export), "name": name} if name else str(export)
    config = {
        "valt": {"url": url, "username": USERNAME, "timeout": CLIENT_TIMEOUT},
        "watch": {
            "paths": [folder],
            "settle": settle,
            "rescan_interval": rescan_interval,
            "check_container": False,  # the files are random bytes
        },
        "upload": {"workers": 2, **upload},
        "after_upload": after_upload,
        "ledger": ledger,
        # Debug: each file's steps (shared_checks reads record.created and upload.completed),
        # and how far a file had got when its daemon was killed.
        "log": {"format": "json", "level": "debug"},
        "status": {"listen": None},
    }
    path.write_text(yaml.safe_dump(config))


def daemon_env(password: str, failpoints: str | None = None) -> dict[str, str]:
    """This process's environment, the password added, failpoints armed only if asked."""
    env = dict(os.environ)
    env["INGESTD_VALT_PASSWORD"] = password
    env.pop(ENV_VAR, None)
    if failpoints:
        env[ENV_VAR] = failpoints
    return env


def spawn_daemon(
    config: Path,
    log: Path,
    header: str,
    env: dict[str, str],
    cwd: Path,
    *,
    prefix: Sequence[str] = (),
    stdin: int | IO[bytes] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """``ingestd run`` (after ``prefix``, e.g. setpriv), its output appended to ``log`` after
    a ``=== header`` line; returns the process and where its part of the log begins."""
    command = [*prefix, sys.executable, "-m", "ingestd", "run", "-c", str(config)]
    with open(log, "ab") as handle:
        handle.write(f"=== {header}\n".encode())
        handle.flush()
        offset = handle.tell()
        process = subprocess.Popen(
            command, env=env, stdin=stdin, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
        )
    return process, offset


def log_says(log: Path, offset: int, needle: bytes = STARTED) -> bool:
    """Whether the log, from ``offset`` on, holds ``needle``."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        return needle in handle.read()


def wait_started(
    process: subprocess.Popen[bytes], log: Path, offset: int, timeout: float, interval: float
) -> None:
    """Until this start's log says ``daemon.started`` (or the process ended, or ``timeout``):
    a SIGTERM before the daemon set its handlers kills it, which is no clean stop."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if log_says(log, offset):
            return
        time.sleep(interval)


def wait_exit(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    """The exit code, or None if the process still runs after ``seconds``."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(seconds)
    return None


def reap(process: subprocess.Popen[bytes]) -> int:
    """Wait for a stopping daemon; one that takes over a minute is killed."""
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(30)


def terminate(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as systemd stops it; the exit code (0 is a clean stop)."""
    process.send_signal(signal.SIGTERM)
    return reap(process)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL unless it already ended, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(30)


def logged_errors(text: str, events: Sequence[str]) -> Counter[str]:
    """Tracebacks and the given JSON log events in a daemon's log, by kind."""
    bad: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("Traceback"):
            bad["traceback"] += 1
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        if event in events:
            bad[event] += 1
    return bad


# --- the result -------------------------------------------------------------------------------


def markdown_table(
    rows: Sequence[tuple[str, str]], problems: Sequence[str], *, limit: int, gap: bool
) -> str:
    """Two columns of figures, then the first ``limit`` problems (after a blank line: ``gap``)."""
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | |", f"| {'-' * width} | --- |"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    if problems and gap:
        lines.append("")
    lines += [f"problem: {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


def finish_main(table: str, data: dict[str, Any], json_path: Path | None, ok: bool) -> int:
    """Print the table, write the JSON if asked; the exit code."""
    print()
    print(table)
    if json_path:
        json_path.write_text(json.dumps(data, indent=2))
    return 0 if ok else 1
