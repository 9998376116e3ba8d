"""A shared ledger when things go wrong: PostgreSQL killed and restarted, a chunk that
outlasts the lease, a node cut off mid-chunk, a rolling upgrade that leaves a node behind.

Real daemons (processes), a real PostgreSQL (tests/pg_support.py), the fake Valt
server; each case ends with every file uploaded exactly once and no two senders
on one video at once (the fake server counts that).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
from conftest import (
    MiB,
    free_port,
    health,
    log_events,
    random_file,
    start_daemon,
    stop_process,
    wait_for,
)
from test_shared_ledger import assert_each_file_once, jobs, migrate, node_config

from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.schema import SCHEMA_VERSION
from tests.pg_support import PgProxy, PgServer, database_of


def _states(url: str) -> list[str]:
    return [str(row["state"]) for row in jobs(url)]


def _acked(url: str) -> int:
    rows = jobs(url)
    return int(rows[0]["bytes_acked"]) if rows else 0


def _events(log: Path, name: str) -> list[dict[str, object]]:
    return [e for e in log_events(log) if e.get("event") == name]


def test_postgresql_killed_and_restarted_mid_run_loses_nothing(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_server: PgServer, pg_url: str
) -> None:
    for n in range(4):
        random_file(export / f"clip{n}.mp4", 1 * MiB + n, seed=n)
    port = free_port()
    config = node_config(
        tmp_path,
        "a",
        pg_url,
        export,
        server,
        upload={"bandwidth_limit": "2MB"},
        status={"listen": f"127.0.0.1:{port}"},
    )
    migrate(config)
    log = tmp_path / "a.log"
    daemon = start_daemon(config, log)
    try:
        assert wait_for(lambda: sum(int(r["bytes_acked"]) for r in jobs(pg_url)) > 0, timeout=30)
        pg_server.kill()
        # The daemon stays up and says why it waits.
        assert wait_for(
            lambda: "the shared ledger is unreachable since" in str(health(port)[1]), timeout=30
        )
        assert health(port)[0] == 503
        assert daemon.poll() is None
        pg_server.start()
        assert wait_for(lambda: _states(pg_url) == ["done"] * 4, timeout=60)
        assert wait_for(lambda: health(port)[0] == 200, timeout=30)
    finally:
        assert stop_process(daemon) == 0
    assert_each_file_once(server, export)
    # It said so in its log, and went on once PostgreSQL answered again.
    said = ("ledger.unwritable", "job.ledger_unwritable", "ledger.renew_failed")
    assert any(_events(log, name) for name in said)


def test_a_chunk_longer_than_the_lease_is_renewed_on_a_timer_while_it_is_on_the_wire(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    """One request of 12 s (the whole file, 500 KB/s) against a 5 s lease: the timer renews
    the claim, so the other node never takes the job and nothing is sent twice."""
    random_file(export / "long.mp4", 6 * MiB, seed=7)
    whole = {"chunk_size": 0, "bandwidth_limit": "500KB"}
    a = node_config(tmp_path, "a", pg_url, export, server, upload=whole)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(a)
    first = start_daemon(a, tmp_path / "a.log")
    second = None
    try:
        assert wait_for(lambda: _states(pg_url) == ["uploading"], timeout=30)
        second = start_daemon(b, tmp_path / "b.log")
        assert wait_for(lambda: _states(pg_url) == ["done"], timeout=60)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                assert stop_process(daemon) == 0
    assert_each_file_once(server, export)
    [row] = jobs(pg_url)
    assert row["last_node"] == "a"
    assert not _events(tmp_path / "a.log", "job.claim_ended")
    assert not _events(tmp_path / "b.log", "upload.resumed")


def test_a_node_cut_off_mid_chunk_aborts_it_before_its_lease_ends(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str, pg_proxy: PgProxy
) -> None:
    """Whole-file requests of 12 s: cut off, node a cannot renew, aborts the request on the
    wire before the lease ends; b takes the job over afterwards and finishes it."""
    random_file(export / "long.mp4", 6 * MiB, seed=8)
    whole = {"chunk_size": 0, "bandwidth_limit": "500KB"}
    a = node_config(tmp_path, "a", pg_proxy.url(database_of(pg_url)), export, server, upload=whole)
    b = node_config(tmp_path, "b", pg_url, export, server)
    migrate(b)
    log_a = tmp_path / "a.log"
    first = start_daemon(a, log_a)
    second = None
    try:
        assert wait_for(lambda: _states(pg_url) == ["uploading"], timeout=30)
        time.sleep(1.0)  # the request is on the wire
        pg_proxy.cut(mode="hang", existing="hang")
        second = start_daemon(b, tmp_path / "b.log")
        assert wait_for(lambda: _states(pg_url) == ["done"], timeout=90)
    finally:
        for daemon in (first, second):
            if daemon is not None:
                stop_process(daemon, signal.SIGKILL)
    assert_each_file_once(server, export)
    ended = _events(log_a, "job.claim_ended")
    assert ended and "on the wire" in str(ended[0]["why"]), ended
    assert jobs(pg_url)[0]["last_node"] == "b"


def test_a_node_older_than_the_shared_schema_stops_claiming_and_exits_1(
    tmp_path: Path, server: FakeValtThread, export: Path, pg_url: str
) -> None:
    config = node_config(tmp_path, "a", pg_url, export, server)
    migrate(config)
    log = tmp_path / "a.log"
    daemon = start_daemon(config, log)
    try:
        assert wait_for(lambda: log.exists() and "daemon.started" in log.read_text(), timeout=20)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # another node migrated past it
            conn.execute(
                "UPDATE meta SET value=%s WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)
            )
        assert daemon.wait(30) == 1
    finally:
        stop_process(daemon, signal.SIGKILL)
    output = log.read_text()
    assert "upgrade ingestd on this node" in output
    assert _events(log, "ledger.outdated")
