"""Retention: done jobs old enough to forget (``ledger.forget_after``), and forgetting them.

Without it the ledger keeps one row per file ever uploaded. What may be forgotten is
decided above the ledger (``upload/retention.py``: only a job whose source is gone);
here are the two statements, each bounded, so that a first pass over years of rows
neither holds the ledger for long nor reads it all into memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingestd.ledger.connection import MAX_VARIABLES, Connected, marks
from ingestd.ledger.model import Job, OldDone, State


class Retention(Connected):
    async def old_done(self, before: float, after_id: int, limit: int) -> list[OldDone]:
        """Up to ``limit`` done jobs with an id above ``after_id`` (oldest first) that were
        done at or before ``before`` and whose after-upload action has run, unless it was
        held back while another job owned the file (``left_alone: owned``: it is still due).
        Each says whether a newer job of the same path exists (the scan compares the file
        there with that one, not with this)."""
        rows = await self._conn.fetchall(
            "SELECT j.*, EXISTS(SELECT 1 FROM jobs AS o WHERE o.path=j.path AND o.id>j.id) "
            "AS superseded FROM jobs AS j WHERE j.state=? AND j.after_done=1 "
            "AND j.left_alone IS NOT 'owned' AND j.done_at<=? AND j.id>? ORDER BY j.id LIMIT ?",
            (State.DONE.value, before, after_id, limit),
        )
        found = []
        for row in rows:
            values = dict(zip(row.keys(), tuple(row), strict=True))
            superseded = bool(values.pop("superseded"))
            values["state"] = State(values["state"])
            found.append(OldDone(Job(**values), superseded))
        return found

    async def forget_done(self, job_ids: Sequence[int], before: float) -> int:
        """Delete the done jobs ``job_ids`` still done at or before ``before``; returns how
        many went. One statement (atomic by itself) per batch of ids.

        The newest job (highest id) is never deleted: SQLite gives a new row the highest id
        plus one, so with it gone a job id would be given twice (to a job that ``retry N``,
        the logs and the deletion queue would take for the forgotten one)."""
        ids = sorted(set(job_ids))
        forgotten = 0
        for first in range(0, len(ids), MAX_VARIABLES):
            part = ids[first : first + MAX_VARIABLES]
            cursor = await self._conn.execute(
                "DELETE FROM jobs WHERE state=? AND done_at<=? AND id<(SELECT MAX(id) FROM jobs) "
                f"AND id IN ({marks(part)})",
                (State.DONE.value, before, *part),
            )
            forgotten += cursor.rowcount
        return forgotten
