"""The fleet-wide commands of a shared ledger: ``status`` lists every node, ``ledger
forget-node`` drops a gone one, ``pause``/``resume``/``retry`` take ``--node``, ``export``
names each file's node.

Real parts: daemons as processes on one share, a real PostgreSQL (tests/pg_support.py),
the fake Valt server over loopback HTTP. One pair of daemons serves several checks.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import (
    KiB,
    MiB,
    log_events,
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_shared_ledger import jobs, migrate, node_config

from ingestd.fake_valt import FakeValtThread
from tests.support import WaitTimeout


class Fleet:
    """Daemons on one shared ledger, by node name; each killed at the end if still running."""

    def __init__(self, tmp_path: Path, url: str, share: Path, server: FakeValtThread) -> None:
        self.tmp_path, self.url, self.share, self.server = tmp_path, url, share, server
        self.configs: dict[str, Path] = {}
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def config(self, node: str, **sections: Any) -> Path:
        # At debug: _sent_by reads record.created and upload.completed.
        sections = {"log": {"level": "debug"}, **sections}
        if node not in self.configs:
            self.configs[node] = node_config(
                self.tmp_path, node, self.url, self.share, self.server, **sections
            )
        return self.configs[node]

    def start(self, *nodes: str) -> None:
        """Start these nodes at once; return when each has written a heartbeat."""
        for node in nodes:
            self.daemons[node] = start_daemon(self.configs[node], self.log(node))
        for node in nodes:
            wait_for(lambda n=node: _beaten(self.url, n), timeout=20, what=f"{node}'s heartbeat")

    def log(self, node: str) -> Path:
        return self.tmp_path / f"{node}.log"

    def events(self, node: str, name: str) -> list[dict[str, Any]]:
        return [e for e in log_events(self.log(node)) if e.get("event") == name]

    def cli(self, *args: str, node: str = "a") -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "-c", str(self.configs[node]))

    def status(self, node: str = "a") -> dict[str, Any]:
        done = self.cli("status", "--json", node=node)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.status()["nodes"]}

    def close(self) -> None:
        for daemon in self.daemons.values():
            stop_process(daemon, signal.SIGKILL)


@pytest.fixture
def fleet(tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str) -> Iterator[Fleet]:
    made = Fleet(tmp_path, pg_url, export, server)
    try:
        yield made
    finally:
        made.close()


def test_status_lists_every_node_a_killed_one_goes_gone_and_forget_node_drops_it(
    fleet: Fleet,
) -> None:
    random_file(fleet.share / "long.mp4", 6 * MiB, seed=1)
    migrate(fleet.config("a", upload={"bandwidth_limit": "400KB"}))
    fleet.config("b")
    fleet.start("a")
    assert wait_for(lambda: (_row(fleet.url, "long.mp4", "bytes_acked") or 0) >= 256 * KiB)
    fleet.start("b")

    nodes = fleet.nodes()
    assert sorted(nodes) == ["a", "b"]
    for name, node in nodes.items():
        assert node["state"] == "running" and node["host"] == socket.gethostname(), node
        assert node["pid"] == fleet.daemons[name].pid and node["heartbeat_at"] is not None
        assert 0 <= node["heartbeat_age_s"] < 10 and node["paused"] is False
        assert node["server"] is not None and node["problems"] == []
    [held] = nodes["a"]["active"]  # a holds a live claim on the file it sends
    assert (held["path"], held["state"]) == (str(fleet.share / "long.mp4"), "uploading")
    assert nodes["b"]["active"] == [] and nodes["b"]["more_active"] == 0
    status = fleet.status()
    assert status["counts"]["uploading"] == 1 and status["daemon"]["running"] is True
    assert status["ledger"].startswith("postgresql://")
    text = fleet.cli("status").stdout
    assert text.startswith("nodes:\n  a "), text
    assert "holds 1 job(s):" in text and "long.mp4" in text and "\n  b " in text
    assert "health: ok" in text and "jobs:   waiting 0  queued 0" in text

    refused = fleet.cli("ledger", "forget-node", "b")
    _one_line(refused, 1, "node b is live", "stop it first")
    _one_line(fleet.cli("ledger", "forget-node", "nobody"), 1, "no node 'nobody'")
    # A node whose heartbeat is stuck but that still renews its claim is live all the same.
    stuck = wait_for(lambda: _forget_while_silent(fleet, "a"), timeout=20, what="a refusal")
    _one_line(stuck, 1, "node a is live", "renewed 1 claim(s)", "stop it first")
    assert _row(fleet.url, "long.mp4", "lease_owner") == "a"

    # b takes nothing (paused), so a's claim outlives a: forget-node gives it back. b is
    # frozen meanwhile: gone as well, forgotten, and listed again once it beats again.
    _paused(fleet, "pause", "b")
    fleet.daemons["a"].send_signal(signal.SIGKILL)
    fleet.daemons["a"].wait(10)
    fleet.daemons["b"].send_signal(signal.SIGSTOP)
    gone = wait_for(
        lambda: (
            all(n["state"] == "gone" and not n["active"] for n in fleet.nodes().values())
            and fleet.nodes()["a"]
        ),
        timeout=20,
        what="a and b gone, a's claim run out",
    )
    assert gone["heartbeat_age_s"] >= 10  # twice the lease of 5 s (rounded to 0.1 s)
    text = fleet.cli("status").stdout
    assert "  a                GONE" in text and "ledger forget-node a" in text, text
    assert _row(fleet.url, "long.mp4", "lease_owner") == "a"

    forgot = fleet.cli("ledger", "forget-node", "a")
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot node a" in forgot.stdout and "1 claim(s)" in forgot.stdout
    assert _row(fleet.url, "long.mp4", "lease_owner") is None
    assert "0 claim(s)" in fleet.cli("ledger", "forget-node", "b").stdout
    assert fleet.nodes() == {}
    assert fleet.cli("status").stdout.startswith("nodes:  none")
    fleet.daemons["b"].send_signal(signal.SIGCONT)
    back = wait_for(lambda: fleet.nodes().get("b"), timeout=20, what="b listed again")
    assert back["state"] == "running" and back["paused"] is False  # a new registration
    wait_for(lambda: _row(fleet.url, "long.mp4", "state") == "done", timeout=30, what="done")
    assert _row(fleet.url, "long.mp4", "last_node") == "b"

    assert stop_process(fleet.daemons["b"]) == 0
    stopped = fleet.nodes()["b"]
    assert stopped["state"] == "stopped" and stopped["stopped_at"] is not None
    assert "  b                stopped" in fleet.cli("status").stdout


def test_pause_resume_and_retry_per_node_and_export_names_each_files_node(
    fleet: Fleet,
) -> None:
    fleet.server.set_faults(fail_names=["fa", "fb"])  # their create-upload 500s
    once = {"max_attempts": 1}
    migrate(fleet.config("a", upload=once))
    fleet.config("b", upload=once)
    fleet.start("a", "b")
    _one_line(fleet.cli("pause", "--node", "nobody"), 1, "no node 'nobody'")
    _one_line(fleet.cli("retry", "--node", "nobody"), 1, "no node 'nobody'")

    # b paused: a takes the new file (and fails it).
    _paused(fleet, "pause", "b")
    random_file(fleet.share / "fa.mp4", 50 * KiB, seed=2)
    wait_for(lambda: _row(fleet.url, "fa.mp4", "state") == "failed", timeout=20, what="fa")
    assert _row(fleet.url, "fa.mp4", "last_node") == "a"
    nodes = fleet.nodes()
    assert (nodes["a"]["paused"], nodes["b"]["paused"]) == (False, True)
    assert "(PAUSED: `ingestd resume --node b` to go on)" in fleet.cli("status").stdout

    # a paused instead: b goes on with new files, a takes none of them.
    _paused(fleet, "resume", "b", "pause", "a")
    random_file(fleet.share / "fb.mp4", 50 * KiB, seed=3)
    random_file(fleet.share / "ok.mp4", 50 * KiB, seed=4)
    wait_for(lambda: _row(fleet.url, "fb.mp4", "state") == "failed", timeout=20, what="fb")
    wait_for(lambda: _row(fleet.url, "ok.mp4", "state") == "done", timeout=20, what="ok")
    assert _row(fleet.url, "fb.mp4", "last_node") == "b"
    assert _sent_by(fleet, "ok.mp4") == {"b"}
    assert fleet.status()["paused"] is False  # only a is
    _paused(fleet, "resume", "a")

    # retry --node a: only the job a failed.
    fleet.server.set_faults(fail_names=[])
    retried = fleet.cli("retry", "--node", "a")
    assert retried.returncode == 0, retried.stderr
    fa_id = _row(fleet.url, "fa.mp4", "id")
    assert retried.stdout.strip() == f"re-queued 1 job(s): {fa_id}"
    wait_for(lambda: _row(fleet.url, "fa.mp4", "state") == "done", timeout=20, what="fa done")
    assert _row(fleet.url, "fb.mp4", "state") == "failed"
    again = fleet.cli("retry", "--node", "a")
    assert again.returncode == 1 and "no failed job was last held by node a" in again.stderr

    # The fleet-wide pause stops both; resume lets them go on.
    paused = fleet.cli("pause")
    assert paused.returncode == 0 and "paused: no new files are taken" in paused.stdout
    wait_for(lambda: all(len(fleet.events(n, "daemon.paused")) == 2 for n in "ab"), timeout=10)
    assert fleet.status()["paused"] is True
    random_file(fleet.share / "late.mp4", 50 * KiB, seed=5)
    wait_for(lambda: _row(fleet.url, "late.mp4", "state") == "queued", timeout=20, what="queued")
    assert not wait_for_quietly(lambda: _row(fleet.url, "late.mp4", "state") != "queued", 2)
    assert fleet.cli("resume").returncode == 0
    wait_for(lambda: _row(fleet.url, "late.mp4", "state") == "done", timeout=20, what="late")

    exported = fleet.cli("export")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(rows[0]) == [
        "file", "size", "sha256", "record_id", "uploaded_at", "record_name", "node"
    ]  # fmt: skip
    shown = {Path(row["file"]).name: row["node"] for row in rows}
    assert sorted(shown) == ["fa.mp4", "late.mp4", "ok.mp4"]  # fb failed: not uploaded
    for name, node in shown.items():
        assert node in ("a", "b") and node == _row(fleet.url, name, "uploaded_by"), name
    assert {row["file"] for row in rows} == {str(fleet.share / name) for name in shown}


def test_the_fleet_commands_on_a_sqlite_ledger_say_they_are_for_a_shared_one(
    tmp_path: Path,
) -> None:
    config = str(write_config(tmp_path, "http://127.0.0.1:9"))
    for args in (
        ("ledger", "forget-node", "a"),
        ("pause", "--node", "a"),
        ("resume", "--node", "a"),
        ("retry", "--node", "a"),
    ):
        _one_line(run_cli(*args, "-c", config), 2, "for a shared ledger (ledger.url)")
    both = run_cli("retry", "1", "--node", "a", "-c", config)
    _one_line(both, 2, "job ids or --node, not both")


# --- helpers -------------------------------------------------------------------------------


def _one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def _paused(fleet: Fleet, *steps: str) -> None:
    """``pause|resume --node NODE`` for each (verb, node) of ``steps``; then wait until each
    of those daemons obeyed."""
    waits = []
    for verb, node in zip(steps[::2], steps[1::2], strict=True):
        event = "daemon.paused" if verb == "pause" else "daemon.resumed"
        waits.append((node, event, len(fleet.events(node, event))))
        done = fleet.cli(verb, "--node", node)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"node {node} {verb}d"), done.stdout
    for node, event, before in waits:
        wait_for(lambda: len(fleet.events(node, event)) > before, timeout=10, what=event)  # noqa: B023


def _forget_while_silent(fleet: Fleet, node: str) -> subprocess.CompletedProcess[str] | None:
    """``forget-node`` just after making ``node`` look silent for a minute (None: its next
    heartbeat came in between)."""
    with psycopg.connect(fleet.url) as conn:
        conn.execute("UPDATE nodes SET seen_at=seen_at-60 WHERE name=%s", (node,))
    done = fleet.cli("ledger", "forget-node", node)
    return done if "renewed" in done.stderr or done.returncode == 0 else None


def _sent_by(fleet: Fleet, name: str) -> set[str]:
    """The nodes whose log says they created the file's record or sent its last byte."""
    return {
        node
        for node in fleet.daemons
        for event in ("record.created", "upload.completed")
        for e in fleet.events(node, event)
        if str(e.get("path", "")).endswith("/" + name)
    }


def wait_for_quietly(predicate: Any, seconds: float) -> bool:
    """Whether ``predicate`` came true within ``seconds`` (no failure when it did not)."""
    try:
        wait_for(predicate, timeout=seconds, interval=0.2)
    except WaitTimeout:
        return False
    return True


def _row(url: str, name: str, column: str) -> Any:
    for row in jobs(url):
        if str(row["path"]).endswith("/" + name):
            return row[column]
    return None


def _beaten(url: str, node: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT heartbeat FROM nodes WHERE name=%s", (node,)).fetchone()
    return row is not None and row[0] is not None
