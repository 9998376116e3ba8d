"""The shared-ledger campaign's nodes: one daemon each, started, killed and started again;
and the shared ledger read from outside (the campaign's own connection, never the proxy)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from chaos.harness import (
    PASSWORD,
    daemon_env,
    kill,
    log_says,
    reap,
    spawn_daemon,
    wait_started,
    write_config,
)
from chaos.shared_plan import WATCH_NAME

STARTUP = 3.0
"""Seconds after ``daemon.started`` during which a node still reads the ledger outside its
retrying loops (the pause flag, the jobs in scope): PostgreSQL lost then ends the daemon
(exit 1; systemd starts it again), so the campaign's outages wait until every node is past
it."""


class Node:
    """One daemon (``ledger.node: NAME``), its own folder, config and log; it sees the share
    at a path of its own (``mount``) and reaches PostgreSQL at ``url``."""

    def __init__(
        self,
        name: str,
        home: Path,
        mount: Path,
        url: str,
        *,
        server_url: str,
        lease: float,
        bandwidth: str,
    ) -> None:
        self.name = name
        self.home = home
        self.mount = mount
        self.url = url
        self.server_url = server_url
        self.lease = lease
        self.bandwidth = bandwidth
        self.log = home / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0
        self.up_since = 0.0
        self.started_seen: float | None = None
        """When this start's ``daemon.started`` was first seen (monotonic)."""
        self.restart_at: float | None = None
        """When a killed node comes back (monotonic); None while it runs."""
        self.starts = 0
        self.kills = 0
        self.cut_off = False
        home.mkdir(parents=True, exist_ok=True)

    def config(self, chunk_size: int, moved: Path) -> Path:
        path = self.home / f"config-{chunk_size}.yaml"
        if not path.exists():
            write_config(
                path,
                self.server_url,
                self.mount,
                settle="0.5s",
                rescan_interval="2s",
                upload={
                    "chunk_size": chunk_size,
                    "bandwidth_limit": self.bandwidth,
                    "backoff_initial": "0.05s",
                    "backoff_max": "1s",
                },
                after_upload={"action": "move", "move_to": str(moved)},
                ledger={"url": self.url, "node": self.name, "lease": f"{self.lease:g}s"},
                name=WATCH_NAME,
            )
        return path

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def started(self) -> bool:
        """Running, its ledger open and its signal handlers set (``daemon.started``)."""
        if not self.alive:
            return False
        if self.started_seen is None and log_says(self.log, self.offset):
            self.started_seen = time.monotonic()
        return self.started_seen is not None

    @property
    def settled(self) -> bool:
        """Started, and past its first look at the ledger (``STARTUP``)."""
        return self.started and time.monotonic() - (self.started_seen or 0.0) >= STARTUP

    def start(self, chunk_size: int, moved: Path, header: str) -> None:
        self.starts += 1
        self.restart_at = None
        self.started_seen = None
        self.process, self.offset = spawn_daemon(
            self.config(chunk_size, moved),
            self.log,
            f"{self.name} start {self.starts}: {header}",
            daemon_env(PASSWORD),
            self.home,
        )
        self.up_since = time.monotonic()

    def kill(self, restart_at: float) -> None:
        """SIGKILL, and come back at ``restart_at``."""
        if self.process is not None:
            kill(self.process)
            self.process = None
        self.kills += 1
        self.restart_at = restart_at

    def exited(self) -> int | None:
        """The exit code of a daemon that ended by itself (once; None while it runs)."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self.process = None
        return code

    def stop(self) -> int | None:
        """SIGTERM once it has started (a SIGTERM before kills it); its exit code."""
        if self.process is None:
            return None
        wait_started(self.process, self.log, self.offset, 60, 0.1)
        if self.process.poll() is None:
            self.process.terminate()
        return reap(self.process)

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines of its log, every start's."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    found.append(json.loads(line))
        return found

    def abandon(self) -> None:
        """Kill it whatever it does (the campaign itself failed)."""
        if self.process is not None:
            kill(self.process)
            self.process = None


def migrate(config: Path, cwd: Path) -> None:
    """``ingestd ledger migrate``: the schema, once, before any node starts."""
    done = subprocess.run(
        [sys.executable, "-m", "ingestd", "ledger", "migrate", "-c", str(config)],
        capture_output=True,
        text=True,
        env=daemon_env(PASSWORD),
        cwd=cwd,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ingestd ledger migrate: exit {done.returncode}: {done.stderr}")


def read_ledger(url: str) -> tuple[list[dict[str, Any]], int] | None:
    """Every job row (oldest first) and the number of pending deletions; None while
    PostgreSQL does not answer."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            cursor = conn.execute("SELECT * FROM jobs ORDER BY id")
            names = [column.name for column in cursor.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            pending = conn.execute("SELECT COUNT(*) FROM deletions").fetchone()
    except psycopg.OperationalError:
        return None
    return rows, int(pending[0]) if pending else 0


def claims(url: str) -> dict[str, dict[str, int]]:
    """Node -> state -> jobs it holds a live claim on now (empty if PostgreSQL is away)."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT lease_owner, state, COUNT(*) FROM jobs WHERE lease_owner IS NOT NULL "
                "AND lease_until > EXTRACT(EPOCH FROM clock_timestamp()) "
                "GROUP BY lease_owner, state"
            ).fetchall()
    except psycopg.OperationalError:
        return {}
    held: dict[str, dict[str, int]] = {}
    for owner, state, count in rows:
        held.setdefault(str(owner), {})[str(state)] = int(count)
    return held
