"""Group commit: the writes several tasks make at once share one trip to the ledger's thread
and one commit, and each caller still gets its own outcome, committed before it returns."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from ledger_support import add_job_in

from ingestd.errors import LedgerError
from ingestd.ledger.model import Job, State
from ingestd.ledger.store import SqliteLedger


async def _jobs(ledger: SqliteLedger, state: State, count: int, first: int = 0) -> list[Job]:
    record = {"record_id": "r", "video_id": "v"} if state is State.UPLOADING else {}
    return [
        await add_job_in(
            ledger, state, path=f"/x/{n}.ts", root="/x", snapshot=(9, n, n, 1), **record
        )
        for n in range(first, first + count)
    ]


@contextmanager
def _trips(ledger: SqliteLedger) -> Iterator[list[str]]:
    """Each call the ledger hands to its connection's thread, by the function's name."""
    inner = ledger._conn._conn
    original = inner._execute
    seen: list[str] = []

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(fn, *args, **kwargs)

    inner._execute = counted
    try:
        yield seen
    finally:
        inner._execute = original


async def _statements(ledger: SqliteLedger, seen: list[str] | None) -> None:
    """Trace every statement the connection runs into ``seen`` (None: stop)."""
    inner = ledger._conn._conn
    await inner._execute(inner._conn.set_trace_callback, None if seen is None else seen.append)


def _committed(path: Path) -> dict[int, str]:
    """What another connection sees: each job's state."""
    with sqlite3.connect(path) as conn:
        return {int(i): str(s) for i, s in conn.execute("SELECT id, state FROM jobs")}


async def test_transitions_of_several_tasks_share_one_trip_and_one_commit(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        jobs = await _jobs(ledger, State.UPLOADING, 6)
        stale = jobs[-1]
        await ledger.sent(stale, "sha", 1.0, 2.0)  # moved on: its second move must say no
        statements: list[str] = []
        await _statements(ledger, statements)
        with _trips(ledger) as trips:
            outcomes = await asyncio.gather(
                *(ledger.sent(job, "sha", 1.0, 2.0) for job in jobs[:-1]),
                ledger.sent(stale, "sha", 1.0, 2.0),
            )
        await _statements(ledger, None)
        assert outcomes == [True] * 5 + [False]
        assert trips == ["_run_batch"]
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
        # Committed before the callers went on: another connection sees every move.
        assert set(_committed(tmp_path / "ledger.db").values()) == {"confirming"}
    finally:
        await ledger.close()


async def test_a_write_that_fails_takes_none_of_its_batch_with_it(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        first, second, third = await _jobs(ledger, State.WAITING, 3)
        # Two live jobs for one path break the unique key on live paths.
        clash = ledger.update(second.id, path=first.path)
        with _trips(ledger) as trips:
            outcomes = await asyncio.gather(
                clash,
                ledger.forget(first.id),
                ledger.forget(third.id),
                return_exceptions=True,
            )
        assert trips == ["_run_batch"]  # one batch
        assert isinstance(outcomes[0], sqlite3.IntegrityError)
        assert outcomes[1:] == [True, True]
        # The writes after the clash are committed, and the clash left nothing behind.
        assert _committed(tmp_path / "ledger.db") == {second.id: "waiting"}
        assert (await ledger.get_job(second.id)).path == second.path
    finally:
        await ledger.close()


async def test_a_transition_and_its_follow_up_are_one_trip(tmp_path: Path) -> None:
    """record_created for a job that moved on: the move that does not happen and the
    record queued for deletion instead, one transaction, one trip to the thread."""
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        (job,) = await _jobs(ledger, State.QUEUED, 1)
        with _trips(ledger) as trips:
            assert not await ledger.record_created(job.id, "late-record", "v", None)
        assert trips == ["_run_batch"]
        assert [d.record_id for d in await ledger.due_deletions(1e12)] == ["late-record"]
        assert ledger.deletions_queued == 1
        # And a record_created that moves the job queues nothing, and counts nothing.
        (other,) = await _jobs(ledger, State.CREATING, 1, first=1)
        assert await ledger.record_created(other.id, "its-record", "v", None)
        assert [d.record_id for d in await ledger.due_deletions(1e12)] == ["late-record"]
        assert ledger.deletions_queued == 1
        assert await ledger.deletions_for(other.id) == []
    finally:
        await ledger.close()


async def test_a_caller_cancelled_before_the_trip_takes_its_write_back(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        first, second = await _jobs(ledger, State.WAITING, 2)
        with _trips(ledger) as trips:
            async with ledger.transaction():  # holds the connection: the writes below wait
                waiting = [
                    asyncio.ensure_future(ledger.forget(first.id)),
                    asyncio.ensure_future(ledger.forget(second.id)),
                ]
                await asyncio.sleep(0.05)
                waiting[0].cancel()
            assert await waiting[1] is True
        assert trips[-1:] == ["_run_batch"]  # after the transaction's BEGIN and COMMIT
        with pytest.raises(asyncio.CancelledError):
            await waiting[0]
        assert _committed(tmp_path / "ledger.db") == {first.id: "waiting"}
    finally:
        await ledger.close()


async def test_a_failed_commit_fails_every_write_of_the_batch(tmp_path: Path) -> None:
    """SQLite refuses the whole transaction (here: another connection holds the write lock
    past the busy timeout): no caller is told its write is done, none is written."""
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        first, second = await _jobs(ledger, State.WAITING, 2)
        inner = ledger._conn._conn
        await inner._execute(inner._conn.execute, "PRAGMA busy_timeout=50")
        blocker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with _trips(ledger) as trips:
                outcomes = await asyncio.gather(
                    ledger.forget(first.id), ledger.forget(second.id), return_exceptions=True
                )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert trips == ["_run_batch"]  # one batch
        assert all(isinstance(o, sqlite3.OperationalError | LedgerError) for o in outcomes)
        assert outcomes[0] is not outcomes[1]  # each caller raises its own
        assert set(_committed(tmp_path / "ledger.db")) == {first.id, second.id}
    finally:
        await ledger.close()
