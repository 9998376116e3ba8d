"""Ledgers in any state, for tests: a job put straight into a state, bypassing the
transitions that ingestd itself must go through (tests/test_structure.py checks that)."""

from __future__ import annotations

from typing import Any

from ingestd.ledger.model import JOB_COLUMNS, Job, Snapshot, State
from ingestd.ledger.store import SqliteLedger


async def set_state(ledger: SqliteLedger, job_id: int, state: State, **fields: Any) -> None:
    """Put job ``job_id`` in ``state`` with ``fields``, whatever state it was in."""
    assert set(fields) <= JOB_COLUMNS, set(fields) - JOB_COLUMNS
    changes = {"state": state.value, **fields}
    await ledger._conn.execute(
        f"UPDATE jobs SET {', '.join(f'{key}=?' for key in changes)} WHERE id=?",
        (*changes.values(), job_id),
    )


async def add_job_in(
    ledger: SqliteLedger, state: State, *, path: str, root: str, snapshot: Snapshot, **fields: Any
) -> Job:
    """A new job in ``state`` (ingestd itself adds only waiting ones)."""
    job = await ledger.add_job(path=path, root=root, snapshot=snapshot)
    if state is not State.WAITING or fields:
        await set_state(ledger, job.id, state, **fields)
    return await ledger.get_job(job.id)
