"""The job ledger on PostgreSQL: one queue shared by several daemons ("nodes").

Each node watches the same share (mounted wherever it likes; ``paths.py``) and
takes jobs from one set of tables. Everything a one-machine ledger promises
holds per job, and across nodes: a job is claimed by one node at a time
(``claims.py``), every write to it is fenced by that claim
(``connection.py``), and a node that dies or is cut off loses its claims after
``ledger.lease`` so that another node resumes the same record from
``bytes_acked``.

The statements are the SQLite ledger's (``core.py`` and its mixins); this class
adds opening (the node's lock, the schema check), claims where work is handed
out, per-node state (heartbeat, pause, server and folder problems) in the
``nodes`` table, and the fleet's view for ``ingestd status`` (``fleet.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

from ingestd import __version__
from ingestd.errors import LedgerBusy, LedgerError
from ingestd.ledger.core import LedgerCore, heartbeat_from
from ingestd.ledger.model import (
    DISPATCHABLE,
    FolderReport,
    Heartbeat,
    Job,
    LastRestore,
    Snapshot,
    State,
    Waiting,
)
from ingestd.ledger.postgres import schema
from ingestd.ledger.postgres.claims import Claims
from ingestd.ledger.postgres.connection import DB_NOW, STATEMENT_TIMEOUT, PgConnection, PgRow
from ingestd.ledger.postgres.fleet import FleetViews
from ingestd.ledger.postgres.paths import PathMap

# Connections per node: workers, intake, confirmer and the claim renewal at once.
POOL_SIZE = 8
CONNECT_TIMEOUT = 5  # s, libpq's connect_timeout
_LIVE_KEY = "state NOT IN ('done', 'skipped')"


def node_lock_key(node: str) -> str:
    return f"ingestd node {node}"


class PostgresLedger(FleetViews, LedgerCore):
    """A ledger shared by several nodes (see the module docstring)."""

    shared = True

    def __init__(self, conn: PgConnection, *, node: str, lease: float, where: str) -> None:
        self.path = Path("shared-ledger")  # no file: backups and folder checks are PostgreSQL's
        self._where = where
        self.node = node
        self.lease = lease
        self.write_problem: str | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.write_failed = asyncio.Event()
        self._dispatch_index = False
        self._counts = None
        self.deletions_queued = 0
        self._deletions_at_most = 1 << 62  # other nodes queue deletions too: always look
        self._conn = conn  # type: ignore[assignment]  # the Guarded interface, on PostgreSQL
        self._pg = conn
        self.claims = Claims(conn, node=node, lease=lease, roots=conn.paths.names)
        self._lock_conn: psycopg.AsyncConnection[Any] | None = None
        self._stop = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None

    # --- opening ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None,
        node: str,
        lease: float,
        roots: Mapping[str, str],
        daemon: bool = False,
        migrate: bool = False,
    ) -> PostgresLedger:
        """Connect; check the schema (``migrate``: bring it up to date instead). A ``daemon``
        takes the node's lock, registers the node and renews its claims."""
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
        if password is not None:
            kwargs["password"] = password
        kwargs["application_name"] = f"ingestd {node}"
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs=kwargs,
            open=False,
            timeout=STATEMENT_TIMEOUT,
            # No check on every borrow (an empty query: 9 of a small file's 20 round trips);
            # a connection PostgreSQL dropped fails its next statement once, and the pool
            # replaces it (the step is not the job's fault: ledger/watch.py probes).
            # Reconnecting after PostgreSQL went away: the pool retries with its own backoff.
        )
        ledger: PostgresLedger | None = None
        where = describe_url(url)
        holder: dict[str, PostgresLedger] = {}
        conn = PgConnection(
            pool,
            node=node,
            lease=lease,
            paths=PathMap(roots),
            on_failure=lambda problem: holder["ledger"]._note_write_failure(problem),
        )
        ledger = cls(conn, node=node, lease=lease, where=where)
        holder["ledger"] = ledger
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT + 1)
        except psycopg_pool.PoolTimeout:
            await pool.close()
            raise LedgerError(
                f"cannot connect to the shared ledger {where} within {CONNECT_TIMEOUT + 1} s: "
                "check ledger.url, the password (ledger.password_file, the credential "
                "ledger-password, PGPASSFILE) and that PostgreSQL runs"
            ) from None
        try:
            if migrate:
                await schema.migrate(conn)
            await schema.check(conn)
            if daemon:
                await ledger._take_node_lock(url, kwargs)
                await ledger._register()
                await ledger.claims.release_all()
                ledger._renewer = asyncio.create_task(ledger.claims.run(ledger._stop))
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def _take_node_lock(self, url: str, kwargs: Mapping[str, Any]) -> None:
        """One daemon per node name: a session-level advisory lock, dropped by PostgreSQL
        however the process ends (the connection closes)."""
        assert self.node is not None
        try:
            self._lock_conn = await psycopg.AsyncConnection.connect(url, **kwargs)
            cursor = await self._lock_conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (node_lock_key(self.node),)
            )
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise LedgerError(f"cannot take this node's lock in {self.where}: {exc}") from None
        if not row or not row[0]:
            raise LedgerBusy(
                f"another daemon runs as node {self.node!r} on the shared ledger {self.where}: "
                "give each daemon its own ledger.node (the default is the host name)"
            )

    async def _register(self) -> None:
        await self._pg.raw(
            "INSERT INTO nodes(name, host, pid, version, started_at, seen_at) "
            f"VALUES(%s, %s, %s, %s, %s, {DB_NOW}) ON CONFLICT(name) DO UPDATE SET "
            "host=excluded.host, pid=excluded.pid, version=excluded.version, "
            "started_at=excluded.started_at, seen_at=excluded.seen_at, stopped_at=NULL",
            (self.node, socket.gethostname(), os.getpid(), __version__, time.time()),
        )

    @property
    def where(self) -> str:
        return self._where  # postgresql://HOST/DB: never a password, never a query string

    def transaction(self) -> Any:
        """``async with ledger.transaction():`` - one transaction on one pooled connection."""
        return self._pg.transaction()

    async def probe_write(self) -> bool:
        """Does PostgreSQL answer and take writes again? Clears ``write_problem`` when so."""
        try:
            await self._pg.raw(f"UPDATE nodes SET seen_at={DB_NOW} WHERE name=%s", (self.node,))
        except LedgerError:
            return False
        return self._writes_work()

    async def close(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
        with contextlib.suppress(Exception):
            await self.claims.release(list(self.claims.held))
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                await self._lock_conn.close()
        await self._pg.close()

    async def outdated(self) -> str | None:
        """A rolling upgrade migrated the shared schema past this node's version: it claims
        nothing more, stops sending (its claims end at once) and says to upgrade it."""
        try:
            await schema.check(self._pg)
        except schema.SchemaTooNew as exc:
            self.claims.retire()
            return str(exc)
        except LedgerError:
            return None  # unreachable, or another problem that health reports
        return None

    # --- claims ---------------------------------------------------------------------

    def lease_left(self, job_id: int) -> float:
        return self.claims.left(job_id)

    async def release(self, job_ids: Iterable[int], *, sent: bool = False) -> None:
        if sent:
            await self.claims.hold_back(job_ids)
        else:
            await self.claims.release(job_ids)

    async def due_jobs(self, now: float, limit: int, exclude: Sequence[int]) -> list[Job]:
        """Claim up to ``limit`` jobs a worker may take now, oldest file first."""
        states = [s.value for s in DISPATCHABLE]
        rows = await self.claims.take(
            "state=ANY(%s) AND next_attempt_at<=%s AND NOT (id=ANY(%s))",
            (states, now, list(exclude)),
            order="mtime_ns, id",
            limit=limit,
        )
        return [Job.from_row(row) for row in rows]

    async def _claimed(self, jobs: list[Job]) -> list[Job]:
        """Of ``jobs`` (candidates read fleet-wide), those this node now holds, as they are now:
        each still in the state it was read in (another node may have moved it meanwhile,
        and this one would poll or move it for nothing; each caller reads one state)."""
        if not jobs:
            return []
        rows = await self.claims.take(
            "id=ANY(%s) AND state=ANY(%s)",
            ([job.id for job in jobs], sorted({job.state.value for job in jobs})),
        )
        fresh = {int(row["id"]): Job.from_row(row) for row in rows}
        return [fresh[job.id] for job in jobs if job.id in fresh]

    async def waiting(self) -> list[Waiting]:
        """The waiting jobs this node settles: its settle checks run only on the node that
        holds the job (the others leave it alone)."""
        candidates = await super().waiting()
        if not candidates:
            return []
        held = await self.claims.take_ids(item.id for item in candidates)
        return [item for item in candidates if item.id in held]

    async def due_in(self, state: State, now: float) -> list[Job]:
        return await self._claimed(await super().due_in(state, now))

    async def pending_after_actions(self) -> list[Job]:
        return await self._claimed(await super().pending_after_actions())

    async def failed_not_set_aside(self) -> list[Job]:
        return await self._claimed(await super().failed_not_set_aside())

    async def expired_keeps(self, before: float) -> list[Job]:
        return await self._claimed(await super().expired_keeps(before))

    async def chunk_acked(self, job: Job, bytes_acked: int) -> bool:
        sent_at = time.monotonic()
        moved = await super().chunk_acked(job, bytes_acked)
        if moved:
            self.claims.renewed((job.id,), sent_at)  # the UPDATE renewed the claim too
        return moved

    async def queue(self, files: Sequence[Any]) -> int:
        """waiting -> queued, then given back: any node may send them. One this node's
        dispatcher took again meanwhile (the moment it was queued) stays this node's."""
        seen = {item.job_id: self.claims.held.get(item.job_id) for item in files}
        moved = await super().queue(files)
        await self.claims.release(seen, as_seen=seen)
        return moved

    async def skip_duplicate(
        self, job_id: int, snapshot: Snapshot, fingerprint: str, sha256: str | None, why: str
    ) -> bool:
        moved = await super().skip_duplicate(job_id, snapshot, fingerprint, sha256, why)
        await self.claims.release((job_id,))
        return moved

    async def forget(self, job_id: int) -> bool:
        gone = await super().forget(job_id)
        self.claims.held.pop(job_id, None)
        return gone

    # --- jobs -----------------------------------------------------------------------

    async def add_job(self, *, path: str, root: str, snapshot: Snapshot) -> Job:
        """A new waiting job, or the live job another node made for the same file first
        (one job per file: the unique key on live paths)."""
        added = await self.add_jobs(root=root, files=[(path, snapshot)])
        return await self.get_job(added[path])

    async def add_jobs(self, *, root: str, files: Sequence[tuple[str, Snapshot]]) -> dict[str, int]:
        if not files:
            return {}
        now = time.time()
        rows = [(path, root, State.WAITING.value, *snap, now, now) for path, snap in files]
        await self._pg.executemany(
            "INSERT OR IGNORE INTO jobs(path, root, state, size, mtime_ns, inode, device, "
            "discovered_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
            rows,
        )
        portable = [self._pg.paths.portable(path) for path, _ in files]
        found = await self._pg.raw(
            f"SELECT id, path FROM jobs WHERE path=ANY(%s) AND {_LIVE_KEY}", (portable,)
        )
        return {str(row["path"]): int(row["id"]) for row in found}

    async def counts(self) -> dict[str, int]:
        rows = await self._conn.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        found = {str(row[0]): int(row[1]) for row in rows}
        return {s.value: found.get(s.value, 0) for s in State}

    async def suspected_orphans(self) -> list[dict[str, Any]]:
        rows = await self._conn.fetchall(
            "SELECT record_id, job_id, name, why, noted_at FROM suspected_orphans ORDER BY noted_at"
        )
        return [dict(row) for row in rows]

    async def last_restore(self) -> LastRestore | None:
        return None  # PostgreSQL's backups are the site's own (pg_dump), never ingestd's

    # --- this node's state -------------------------------------------------------------

    async def _node_row(self) -> PgRow | None:
        rows = await self._pg.raw("SELECT * FROM nodes WHERE name=%s", (self.node,))
        return rows[0] if rows else None

    async def set_paused(self, paused: bool) -> None:
        """Fleet-wide (``pause`` without ``--node``); see :meth:`set_node_paused`."""
        await self._set_meta("paused", "1" if paused else "0")

    async def set_node_paused(self, node: str, paused: bool) -> bool:
        """One node's pause (``pause --node``); False when no such node is known."""
        rows = await self._pg.raw(
            "UPDATE nodes SET paused=%s WHERE name=%s RETURNING name", (int(paused), node)
        )
        return bool(rows)

    async def is_paused(self) -> bool:
        if await self.get_meta("paused") == "1":
            return True
        row = await self._node_row()
        return bool(row and row["paused"])

    async def set_server_problem(self, problem: str | None, since: float) -> None:
        await self._pg.raw(
            "UPDATE nodes SET server_problem=%s, server_problem_since=%s WHERE name=%s",
            (problem or None, since if problem else None, self.node),
        )

    async def server_problem(self) -> tuple[str, float] | None:
        row = await self._node_row()
        if row is None or not row["server_problem"] or row["server_problem_since"] is None:
            return None
        return str(row["server_problem"]), float(row["server_problem_since"])

    async def set_folder_states(self, states: Sequence[FolderReport]) -> None:
        await self._pg.raw(
            "UPDATE nodes SET folder_states=%s WHERE name=%s",
            (json.dumps(list(states)), self.node),
        )

    async def folder_states(self) -> list[FolderReport]:
        row = await self._node_row()
        if row is None or not row["folder_states"]:
            return []
        items: list[FolderReport] = json.loads(row["folder_states"])
        return items

    async def write_heartbeat(self, beat: Heartbeat) -> None:
        fields = {**asdict(beat), "problems": list(beat.problems), "folders": dict(beat.folders)}
        sql = f"UPDATE nodes SET heartbeat=%s, seen_at={DB_NOW}, stopped_at=%s WHERE name=%s"
        values = (json.dumps(fields), beat.stopped_at, self.node)
        if not await self._pg.raw(sql + " RETURNING name", values):
            # Dropped by `ingestd ledger forget-node` while silent: on the list again.
            await self._register()
            await self._pg.raw(sql, values)

    async def heartbeat(self) -> Heartbeat | None:
        row = await self._node_row()
        if row is None or not row["heartbeat"]:
            return None
        return heartbeat_from(str(row["heartbeat"]))


def describe_url(url: str) -> str:
    """``postgresql://HOST/DB`` for messages: no user's password, no query string."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = str(info.get("host") or "localhost")
    if host.startswith("/"):
        host = "local socket"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{host}{port}/{info.get('dbname') or ''}"
