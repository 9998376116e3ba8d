"""The fleet's view of a shared ledger: every node, and what only a shared ledger is asked.

``ingestd status`` lists the nodes (:meth:`FleetViews.nodes`), ``ingestd ledger
forget-node`` drops one that is gone (:meth:`FleetViews.forget_node`) and ``ingestd
retry --node`` picks the failed jobs one node held last
(:meth:`FleetViews.failed_last_held_by`). Whether a node is alive is judged by the
database's clock alone (``nodes.seen_at``, written by each heartbeat): a node
silent for more than twice ``ledger.lease`` is gone (``model.node_state``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ingestd.ledger.core import heartbeat_from
from ingestd.ledger.model import (
    NODE_RUNNING,
    Heartbeat,
    Job,
    NodeForgotten,
    NodeView,
    node_state,
)
from ingestd.ledger.postgres.connection import DB_NOW, PgConnection, PgRow

# A live claim, by the database's clock.
_CLAIMED = f"lease_owner IS NOT NULL AND lease_until>={DB_NOW}"


class FleetViews:
    """PostgresLedger's fleet-wide reads and ``forget_node`` (see the module docstring)."""

    _pg: PgConnection
    lease: float

    async def nodes(self, limit: int | None = None) -> list[NodeView]:
        """Every node by name, each with the jobs it holds a live claim on (the first
        ``limit`` of them, those in flight before the waiting ones; None: all)."""
        rows = await self._pg.raw(
            "SELECT name, host, pid, version, started_at, seen_at, stopped_at, heartbeat, "
            f"paused, GREATEST(0, {DB_NOW} - seen_at) AS silent_s FROM nodes ORDER BY name"
        )
        counted = await self._pg.raw(
            f"SELECT lease_owner, COUNT(*) FROM jobs WHERE {_CLAIMED} GROUP BY lease_owner"
        )
        counts = {str(row[0]): int(row[1]) for row in counted}
        active = await self._claimed_jobs(limit) if counts and limit != 0 else {}
        return [self._view(row, active.get(str(row["name"]), []), counts) for row in rows]

    async def _claimed_jobs(self, limit: int | None) -> dict[str, list[Job]]:
        ranked = (
            "SELECT id, row_number() OVER (PARTITION BY lease_owner "
            "ORDER BY state='waiting', mtime_ns, id) AS n "
            f"FROM jobs WHERE {_CLAIMED}"
        )
        rows = await self._pg.raw(
            f"SELECT * FROM jobs WHERE id IN (SELECT id FROM ({ranked}) AS ranked "
            "WHERE %s::bigint IS NULL OR n<=%s::bigint) "
            "ORDER BY state='waiting', mtime_ns, id",
            (limit, limit),
        )
        found: dict[str, list[Job]] = {}
        for row in rows:
            job = Job.from_row(row)
            found.setdefault(str(job.lease_owner), []).append(job)
        return found

    def _view(self, row: PgRow, active: Sequence[Job], counts: dict[str, int]) -> NodeView:
        beat: Heartbeat | None = heartbeat_from(str(row["heartbeat"])) if row["heartbeat"] else None
        stopped_at = row["stopped_at"]
        if stopped_at is None and beat is not None:
            stopped_at = beat.stopped_at
        silent = float(row["silent_s"])
        name = str(row["name"])
        return NodeView(
            name=name,
            host=str(row["host"]),
            pid=int(row["pid"]),
            version=str(row["version"]),
            started_at=float(row["started_at"]),
            seen_at=float(row["seen_at"]),
            silent_s=silent,
            state=node_state(stopped_at is not None, silent, self.lease),
            stopped_at=None if stopped_at is None else float(stopped_at),
            paused=bool(row["paused"]),
            heartbeat=beat,
            active=tuple(active),
            active_count=counts.get(name, 0),
        )

    async def forget_node(self, name: str) -> NodeForgotten:
        """Drop a node that is gone or stopped from the list, giving back the claims it still
        holds. A live one is left as it is: seen within twice the lease, or holding a claim
        it renewed within the lease (its heartbeat may be stuck while it sends; giving its
        claim to another node then would have two nodes send one file). A node forgotten
        that comes back registers again at its next heartbeat."""
        async with self._pg.transaction():
            rows = await self._pg.raw(
                f"SELECT stopped_at, GREATEST(0, {DB_NOW} - seen_at) FROM nodes WHERE name=%s "
                "FOR UPDATE",
                (name,),
            )
            if not rows:
                return NodeForgotten(False, False, 0.0, 0, 0)
            stopped, silent = rows[0][0] is not None, float(rows[0][1])
            counted = await self._pg.raw(
                f"SELECT COUNT(*) FROM jobs WHERE lease_owner=%s AND lease_until>={DB_NOW}",
                (name,),
            )
            live_claims = int(counted[0][0]) if counted else 0
            if live_claims or node_state(stopped, silent, self.lease) == NODE_RUNNING:
                return NodeForgotten(True, True, silent, live_claims, 0)
            released = await self._pg.raw(
                "UPDATE jobs SET lease_owner=NULL, lease_until=NULL "
                f"WHERE lease_owner=%s AND lease_until<{DB_NOW} RETURNING id",
                (name,),
            )
            await self._pg.raw("DELETE FROM nodes WHERE name=%s", (name,))
        return NodeForgotten(True, False, silent, 0, len(released))

    async def failed_last_held_by(self, node: str) -> list[int]:
        """The failed jobs ``node`` held last (``jobs.last_node``): those it failed."""
        rows = await self._pg.raw(
            "SELECT id FROM jobs WHERE state='failed' AND last_node=%s ORDER BY id", (node,)
        )
        return [int(row[0]) for row in rows]

    async def node_known(self, node: str) -> bool:
        """Whether ``node`` is on the list, or held a job last (it may have been forgotten)."""
        rows = await self._pg.raw(
            "SELECT EXISTS(SELECT 1 FROM nodes WHERE name=%s) "
            "OR EXISTS(SELECT 1 FROM jobs WHERE last_node=%s)",
            (node, node),
        )
        return bool(rows and rows[0][0])

    async def fleet_paused(self) -> bool:
        """The fleet-wide pause (``ingestd pause`` without ``--node``)."""
        rows = await self._pg.raw("SELECT value FROM meta WHERE key='paused'")
        return bool(rows) and rows[0][0] == "1"
