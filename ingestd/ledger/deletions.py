"""The durable queue of partial records to delete on the server, and suspected orphans.

A record is queued in the same transaction as the job change that abandons it
(``transitions.py``), so no orphan survives a crash; the sweeper
(``upload/confirm.py``) deletes them, retrying until the server agrees.
"""

from __future__ import annotations

import time
from typing import Any

from ingestd.ledger.connection import Connected, Write
from ingestd.ledger.model import Deletion


class DeletionQueue(Connected):
    # Partial records queued for deletion through this connection: a worker wakes the
    # sweeper only when its job queued one.
    deletions_queued: int
    # At least the rows in ``deletions`` (counted at open; only this process adds any,
    # under the daemon lock): while 0, deletions_for() needs no query.
    _deletions_at_most: int

    def _deletion(self, record_id: str, job_id: int | None, reason: str, now: float) -> Write:
        """The INSERT that queues a partial record for deletion, for a transition to make
        with its own write; :meth:`_deletion_ran` after. Counted now, before it may run:
        ``_deletions_at_most`` is never too few."""
        self._deletions_at_most += 1
        return Write(
            "INSERT OR IGNORE INTO deletions(record_id, job_id, reason, created_at) "
            "VALUES(?,?,?,?)",
            (record_id, job_id, reason, now),
        )

    def _deletion_ran(self, ran: bool) -> None:
        """A transition's write is committed, with its :meth:`_deletion` (``ran``) or not."""
        if ran:
            self.deletions_queued += 1
        else:
            self._deletions_at_most = max(0, self._deletions_at_most - 1)

    async def _queue_deletion(
        self, record_id: str, job_id: int | None, reason: str, now: float
    ) -> None:
        self.deletions_queued += 1
        await self._conn.write(self._deletion(record_id, job_id, reason, now))

    async def queue_deletion(self, record_id: str, job_id: int | None, reason: str) -> None:
        await self._queue_deletion(record_id, job_id, reason, time.time())

    async def due_deletions(self, now: float) -> list[Deletion]:
        rows = await self._conn.fetchall(
            "SELECT * FROM deletions WHERE next_attempt_at<=? ORDER BY id", (now,)
        )
        return [Deletion.from_row(row) for row in rows]

    async def deletions_for(self, job_id: int) -> list[Deletion]:
        """One job's partial records still to delete (its next record must wait for them)."""
        if not self._deletions_at_most:
            return []
        rows = await self._conn.fetchall(
            "SELECT * FROM deletions WHERE job_id=? ORDER BY id", (job_id,)
        )
        return [Deletion.from_row(row) for row in rows]

    async def pending_deletions(self) -> int:
        row = await self._conn.fetchone("SELECT COUNT(*) FROM deletions")
        return int(row[0]) if row else 0

    async def deletion_done(self, deletion_id: int) -> None:
        cursor = await self._conn.execute("DELETE FROM deletions WHERE id=?", (deletion_id,))
        self._deletions_at_most = max(0, self._deletions_at_most - cursor.rowcount)

    async def deletion_failed(self, deletion_id: int, next_at: float, error: str) -> None:
        await self._conn.execute(
            "UPDATE deletions SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?",
            (next_at, error, deletion_id),
        )

    # --- records left alone that may be orphans of ours ---------------------------------

    async def note_orphan(self, record_id: str, job_id: int, name: str, why: str) -> None:
        """Remember a record that may be an empty leftover of ours but was not deleted."""
        await self._conn.execute(
            "INSERT INTO suspected_orphans(record_id, job_id, name, why, noted_at) "
            "VALUES(?,?,?,?,?) ON CONFLICT(record_id) DO UPDATE SET "
            "job_id=excluded.job_id, why=excluded.why, noted_at=excluded.noted_at",
            (record_id, job_id, name, why, time.time()),
        )

    async def suspected_orphans(self) -> list[dict[str, Any]]:
        """The records :meth:`note_orphan` noted, oldest first (none before schema 3)."""
        table = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='suspected_orphans'"
        if await self._conn.fetchone(table) is None:  # read-only open of an older ledger
            return []
        rows = await self._conn.fetchall(
            "SELECT record_id, job_id, name, why, noted_at FROM suspected_orphans ORDER BY noted_at"
        )
        return [dict(row) for row in rows]
