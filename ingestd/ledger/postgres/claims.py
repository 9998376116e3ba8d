"""Claims: which node works on a job, until when, and how a node stops in time.

A node takes jobs with ``FOR UPDATE SKIP LOCKED`` (two nodes never take one job),
writing ``lease_owner`` (its name), ``lease_until`` (the database's clock plus
``ledger.lease``) and ``last_node``. It renews the claims it holds with every
committed chunk (``connection.py`` renews on every write) and on a timer
(:meth:`Claims.run`), so a job stays its while a long request is on the wire or
while it confirms. Another node may take a job only once its claim has run out
by the database's clock.

**Fencing.** A node judges its own claim by its own monotonic clock, from the
moment *before* it sent the renewal that succeeded: its deadline can only be
earlier than the one the database wrote. :meth:`Claims.left` is the time until
that deadline less a margin (``MARGIN``); the upload sends no chunk when it is
used up and bounds each request by it. So a node cut off from PostgreSQL, alive
or not, stops sending a job's chunks before any other node may take the job.

**One at a time.** A node's own statements on its claims (take, release, renew) run one
after the other, so that ``held`` always says what PostgreSQL holds for it: a take that
ran between a release's forgetting a job here and its UPDATE there would leave the node
believing it holds a job that PostgreSQL shows as free, and another node would send the
same chunks at once (the dispatcher takes a job again the moment a worker lets it go).

What this assumes: the node's and the database's clocks *run* at about the same
rate (a drift far below ``MARGIN`` over one lease; their settings need not agree,
nothing compares them), and a request aborted by the node reaches no further
into the server than ``MARGIN`` after (the server takes no bytes of a request
whose connection was closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ingestd.aio import wait_event
from ingestd.errors import LedgerError
from ingestd.ledger.postgres.connection import DB_NOW, PgConnection, PgRow
from ingestd.logs import get_logger

log = get_logger("ingestd.ledger.claims")


def margin(lease: float) -> float:
    """How long before its claim runs out a node stops: a fifth of the lease, 1 s at least."""
    return max(1.0, lease / 5)


class Claims:
    """The claims this node holds, and their deadlines by its own clock."""

    def __init__(self, conn: PgConnection, *, node: str, lease: float, roots: Sequence[str]):
        self._conn = conn
        self.node = node
        self.lease = lease
        self.margin = margin(lease)
        self.roots = list(roots)  # the folders this node watches, by name
        self.held: dict[int, float] = {}  # job id -> monotonic deadline (0: lost)
        self.lost = 0  # claims found taken over at a renewal (should stay 0)
        self._turn = asyncio.Lock()  # see "One at a time" above

    def left(self, job_id: int) -> float:
        """Seconds this node may still act on ``job_id`` (0: stop now)."""
        deadline = self.held.get(job_id)
        if deadline is None:
            return 0.0
        return max(0.0, deadline - self.margin - time.monotonic())

    def retire(self) -> None:
        """Claim nothing more and act on nothing held (this node must stop)."""
        self.roots = []
        for job_id in self.held:
            self.held[job_id] = 0.0

    def renewed(self, job_ids: Iterable[int], sent_at: float) -> None:
        """A write that renews these claims committed; it was sent at ``sent_at``."""
        for job_id in job_ids:
            if job_id in self.held:
                self.held[job_id] = sent_at + self.lease

    async def take(
        self, where: str, parameters: Sequence[Any] = (), *, order: str = "id", limit: int = 0
    ) -> list[PgRow]:
        """Claim the jobs of this node's folders that match ``where`` (``%s`` placeholders)
        and that no other node holds; returns their rows, in ``order``."""
        if not self.roots:
            return []
        async with self._turn:
            sent_at = time.monotonic()
            rows = await self._conn.raw(
                f"UPDATE jobs SET lease_owner=%s, lease_until={DB_NOW}+%s, last_node=%s "
                f"WHERE id IN (SELECT id FROM jobs WHERE ({where}) AND root=ANY(%s) "
                f"AND (lease_owner IS NULL OR lease_owner=%s OR lease_until<{DB_NOW}) "
                f"ORDER BY {order} {f'LIMIT {int(limit)}' if limit else ''} "
                "FOR UPDATE SKIP LOCKED) RETURNING *",
                (self.node, self.lease, self.node, *parameters, self.roots, self.node),
            )
            for row in rows:
                self.held[int(row["id"])] = sent_at + self.lease
        keys = [key.strip() for key in order.split(",")]
        return sorted(rows, key=lambda row: tuple(row[key] for key in keys))

    async def take_ids(self, job_ids: Iterable[int]) -> set[int]:
        """Claim these jobs where nobody else holds them; the ids this node now holds."""
        wanted = sorted(set(job_ids))
        if not wanted:
            return set()
        rows = await self.take("id=ANY(%s)", (wanted,))
        return {int(row["id"]) for row in rows}

    async def release(
        self, job_ids: Iterable[int], *, as_seen: Mapping[int, float | None] | None = None
    ) -> None:
        """Give these jobs back (another node may take them at once). A release that fails
        is no loss: the claim runs out by itself. ``as_seen``: each job's deadline when the
        caller looked; one taken again since (a new deadline) is kept, not given back."""
        async with self._turn:
            if as_seen is not None:
                job_ids = [i for i in job_ids if self.held.get(i) == as_seen.get(i)]
            ids = [job_id for job_id in job_ids if self.held.pop(job_id, None) is not None]
            if not ids:
                return
            with contextlib.suppress(LedgerError):
                await self._conn.raw(
                    "UPDATE jobs SET lease_owner=NULL, lease_until=NULL "
                    "WHERE id=ANY(%s) AND lease_owner=%s",
                    (ids, self.node),
                )

    async def hold_back(self, job_ids: Iterable[int]) -> None:
        """Done with these jobs, but a request of theirs this node gave up on (a timeout, a
        broken connection) may still reach the server: renew their claims one last time
        and stop renewing, so that no other node sends them for a full lease; this node
        itself may take them again sooner (its requests are one after the other)."""
        async with self._turn:
            ids = [job_id for job_id in job_ids if self.held.pop(job_id, None) is not None]
            if not ids:
                return
            with contextlib.suppress(LedgerError):
                await self._conn.raw(
                    f"UPDATE jobs SET lease_until={DB_NOW}+%s WHERE id=ANY(%s) AND lease_owner=%s",
                    (self.lease, ids, self.node),
                )

    async def release_all(self) -> None:
        """At start: a previous run of this node (it held the node's lock, so it is gone) held
        these; let anyone take them now instead of after their lease."""
        async with self._turn:
            await self._conn.raw(
                "UPDATE jobs SET lease_owner=NULL, lease_until=NULL WHERE lease_owner=%s",
                (self.node,),
            )
            self.held.clear()

    async def renew(self) -> None:
        """Renew every claim held; one found taken over is marked lost (``left`` is 0)."""
        async with self._turn:
            ids = list(self.held)
            if not ids:
                return
            sent_at = time.monotonic()
            rows = await self._conn.raw(
                f"UPDATE jobs SET lease_until={DB_NOW}+%s WHERE id=ANY(%s) AND lease_owner=%s "
                "RETURNING id",
                (self.lease, ids, self.node),
            )
            still = {int(row[0]) for row in rows}
            for job_id in ids:
                if job_id not in self.held:
                    continue  # forgotten meanwhile (a job deleted)
                if job_id in still:
                    self.held[job_id] = sent_at + self.lease
                elif self.held[job_id]:
                    self.held[job_id] = 0.0
                    self.lost += 1
                    log.error("ledger.claim_lost", job_id=job_id, node=self.node)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew on a timer, four times a lease; a failed renewal is tried again at the next
        tick while the deadlines run down (and the upload stops in time)."""
        every = max(0.5, self.lease / 4)
        while not stop.is_set():
            await wait_event(stop, every)
            if stop.is_set():
                return
            try:
                await self.renew()
            except LedgerError as exc:
                soonest = min(self.held.values(), default=math.inf)
                log.warning(
                    "ledger.renew_failed",
                    error=str(exc),
                    claims=len(self.held),
                    stop_in_s=round(max(0.0, soonest - self.margin - time.monotonic()), 1),
                )
