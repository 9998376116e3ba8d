"""Several daemons, one share, one PostgreSQL ledger: each file uploaded exactly once.

Real parts: daemons as processes, a real PostgreSQL (tests/pg_support.py), the
fake Valt server over loopback HTTP, which counts moments when two requests sent
chunks of one video at once (two nodes on one job: must never happen).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from conftest import (
    KiB,
    MiB,
    ingestd_env,
    log_events,
    random_file,
    run_cli,
    run_once,
    server_videos,
    sha256_file,
    start_daemon,
    stop_process,
    wait_for,
)

from ingestd.fake_valt import FakeValtThread
from tests.pg_support import PgProxy, database_of
from tests.support import USERNAME, write_yaml

LEASE = "5s"


def node_config(
    tmp_path: Path, node: str, url: str, share: Path, server: FakeValtThread, **sections: Any
) -> Path:
    """One node's configuration: its own folder, the shared ledger, the share by name."""
    home = tmp_path / node
    home.mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "valt": {"url": server.url, "username": USERNAME, "timeout": "5s"},
        "watch": {
            "paths": [{"path": str(share), "name": "export"}],
            "settle": "0.1s",
            "rescan_interval": "1s",
            "check_container": False,
        },
        "upload": {
            "workers": 2,
            "chunk_size": "256KiB",
            "backoff_initial": "0.05s",
            "backoff_max": "0.5s",
        },
        "ledger": {"url": url, "node": node, "lease": LEASE},
        "log": {"format": "json", "level": "info"},
        "status": {"listen": None},
    }
    return write_yaml(home / "config.yaml", base, sections)


def migrate(config: Path) -> None:
    done = run_cli("ledger", "migrate", "-c", str(config))
    assert done.returncode == 0, done.stderr


def jobs(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cursor = conn.execute("SELECT * FROM jobs ORDER BY id")
        names = [col.name for col in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def overlaps(server: FakeValtThread) -> int:
    return int(server.call(lambda fake: fake.overlapping_chunks))


def assert_each_file_once(server: FakeValtThread, share: Path) -> None:
    """Exactly one record per file, holding its exact bytes; no two senders ever overlapped."""
    held = server_videos(server)
    files = sorted(p for p in share.iterdir() if p.is_file())
    assert sorted(held) == sorted(p.stem for p in files), held
    for path in files:
        assert held[path.stem]["sha256"] == sha256_file(path), path.name
    assert overlaps(server) == 0


def test_two_nodes_share_one_queue_and_upload_each_file_once(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    for n in range(8):
        random_file(export / f"clip{n}.mp4", 300 * KiB + n, seed=n)
    # Node b mounts the share elsewhere: the ledger knows files by folder name.
    elsewhere = tmp_path / "mnt-b"
    elsewhere.symlink_to(export)
    a = node_config(tmp_path, "a", pg_url, export, server)
    b = node_config(tmp_path, "b", pg_url, elsewhere, server)
    migrate(a)
    runs = [
        subprocess.Popen(
            [*_ingestd(), "run", "--once", "--max-wait", "30s", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ingestd_env(),
        )
        for config in (a, b)
    ]
    for run in runs:
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out
    assert_each_file_once(server, export)
    rows = jobs(pg_url)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"done"}
    assert {r["path"] for r in rows} == {f"export/clip{n}.mp4" for n in range(8)}
    assert all(r["lease_owner"] is None for r in rows)  # every claim given back
    print("files per node:", {n: sum(r["last_node"] == n for r in rows) for n in "ab"})


def test_a_second_daemon_with_the_same_node_name_refuses(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = node_config(tmp_path, "a", pg_url, export, server)
    migrate(config)
    daemon = start_daemon(config, tmp_path / "a.log")
    try:
        assert wait_for(lambda: _node_started(pg_url, "a"), timeout=20)
        second = run_cli("run", "--once", "-c", str(config))
        assert second.returncode == 1, second.stderr
        assert "another daemon runs as node 'a'" in second.stderr
    finally:
        assert stop_process(daemon) == 0


def test_a_node_killed_mid_upload_is_taken_over_on_the_same_record(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    big = export / "long.mp4"
    random_file(big, 4 * MiB, seed=3)
    slow = {"bandwidth_limit": "1MB"}
    a = node_config(tmp_path, "a", pg_url, export, server, upload=slow)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(a)
    first = start_daemon(a, tmp_path / "a.log")
    try:
        assert wait_for(lambda: _acked(pg_url) >= 512 * KiB, timeout=30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    [row] = jobs(pg_url)
    assert row["lease_owner"] == "a" and row["state"] == "uploading"
    record = row["record_id"]
    # Node a's host numbers the share's device otherwise than b's: st_dev is never compared
    # across nodes (b must resume, not take the file for a changed one).
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE jobs SET device=device+12345")
    took_over = subprocess.run(
        [*_ingestd(), "run", "--once", "--max-wait", "30s", "-c", str(b)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ingestd_env(),
    )
    assert took_over.returncode == 0, took_over.stderr
    assert_each_file_once(server, export)
    [row] = jobs(pg_url)
    assert (row["state"], row["record_id"], row["last_node"]) == ("done", record, "b")
    resumed = [e for e in _events(took_over.stdout) if e.get("event") == "upload.resumed"]
    assert resumed and resumed[0]["offset"] >= 512 * KiB  # from bytes_acked, not from 0


def test_a_node_cut_off_from_postgresql_stops_sending_before_another_takes_over(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str, pg_proxy: PgProxy
) -> None:
    big = export / "long.mp4"
    random_file(big, 6 * MiB, seed=4)
    slow = {"bandwidth_limit": "500KB"}
    cut_url = pg_proxy.url(database_of(pg_url))
    a = node_config(tmp_path, "a", cut_url, export, server, upload=slow)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(b)
    log_a = tmp_path / "a.log"
    first = start_daemon(a, log_a)
    second: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(lambda: _acked(pg_url) >= 256 * KiB, timeout=30)
        pg_proxy.cut(mode="hang")  # a keeps running, but hears nothing from PostgreSQL
        cut_at = time.monotonic()
        second = start_daemon(b, tmp_path / "b.log")
        assert wait_for(lambda: _states(pg_url) == ["done"], timeout=60)
        took = time.monotonic() - cut_at
        # a, still running, says so (health and the log): the ledger is unreachable.
        assert wait_for(lambda: _said_unreachable(log_a), timeout=30)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                stop_process(daemon, signal.SIGKILL)
    assert_each_file_once(server, export)
    [row] = jobs(pg_url)
    assert row["last_node"] == "b"
    print(f"done {took:.1f} s after a was cut off (lease {LEASE})")


def test_a_shared_ledger_is_migrated_only_on_request_and_backed_up_by_postgresql(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = node_config(tmp_path, "a", pg_url, export, server)
    early = run_cli("run", "--once", "-c", str(config))
    assert early.returncode == 1
    assert "run `ingestd ledger migrate" in early.stderr
    migrated = run_cli("ledger", "migrate", "-c", str(config))
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated to schema version" in migrated.stdout
    assert database_of(pg_url) in migrated.stdout
    for action in ("backup", "restore"):
        refused = run_cli("ledger", action, "-c", str(config))
        assert refused.returncode == 2
        assert "pg_dump" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


# --- helpers -------------------------------------------------------------------------------


def _ingestd() -> list[str]:
    import sys

    return [sys.executable, "-m", "ingestd"]


def _events(text: str) -> list[dict[str, Any]]:
    import json

    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def _said_unreachable(log: Path) -> bool:
    return any(
        e.get("event") == "ledger.unwritable"
        and "the shared ledger is unreachable since" in str(e.get("problem"))
        for e in log_events(log)
    )


def _node_started(url: str, node: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1 FROM nodes WHERE name=%s", (node,)).fetchone()
    return row is not None


def _acked(url: str) -> int:
    rows = jobs(url)
    return int(rows[0]["bytes_acked"]) if rows else 0


def _states(url: str) -> list[str]:
    return [str(r["state"]) for r in jobs(url)]


def test_a_node_killed_while_creating_the_record_is_reconciled_by_the_next_never_twice(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    """The create-upload answer is lost with node a: node b searches the server for the
    record (design.md's reconciliation) instead of making a second one."""
    random_file(export / "Room 3.mp4", 600 * KiB, seed=5)
    a = node_config(tmp_path, "a", pg_url, export, server)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(a)
    killed = run_once(a, INGESTD_FAILPOINTS="after_create_response")
    assert killed.returncode == -signal.SIGKILL
    [row] = jobs(pg_url)
    assert (row["state"], row["lease_owner"]) == ("creating", "a")
    assert len(server.snapshot()["records"]) == 1  # made, but unknown to the ledger
    assert run_once(b, max_wait="30s").returncode == 0
    state = server.snapshot()
    [row] = jobs(pg_url)
    assert (row["state"], row["last_node"]) == ("done", "b")
    live = [r for r in state["records"] if r["id"] not in state["deleted"]]
    assert [r["id"] for r in live] == [row["record_id"]]
    assert overlaps(server) == 0


def test_the_same_content_on_two_paths_is_uploaded_once_across_nodes(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    for room in ("room-1", "room-2"):
        (export / room).mkdir()
        random_file(export / room / f"{room}.mp4", 400 * KiB, seed=9)  # the same bytes
    a = node_config(tmp_path, "a", pg_url, export, server)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(a)
    runs = [
        subprocess.Popen(
            [*_ingestd(), "run", "--once", "--max-wait", "30s", "-c", str(config)],
            env=ingestd_env(),
        )
        for config in (a, b)
    ]
    assert [run.wait(60) for run in runs] == [0, 0]
    assert sorted(r["state"] for r in jobs(pg_url)) == ["done", "skipped"]
    assert len(server.snapshot()["records"]) == 1
