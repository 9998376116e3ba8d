"""The named transitions: each moves a job only out of the states it may leave.

A call in a wrong state (or on a job that moved on since the caller read it)
changes nothing and says so (returns False / 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Opener
from ledger_support import add_job_in, set_state

from ingestd.errors import LedgerError
from ingestd.ledger.model import Job, Queueing, State
from ingestd.ledger.store import SqliteLedger

Call = Callable[[Any, Job], Awaitable[Any]]


# Each transition, the states it may leave (transitions.py's table), and a call of it.
TRANSITIONS: dict[str, tuple[set[State], Call]] = {
    "forget": ({State.WAITING}, lambda led, job: led.forget(job.id)),
    "skip_duplicate": (
        {State.WAITING},
        lambda led, job: led.skip_duplicate(job.id, job.snapshot, "f", "s", "same"),
    ),
    "queue": ({State.WAITING}, lambda led, job: led.queue([Queueing(job.id, job.snapshot, "f")])),
    "source_changed": (
        {State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING, State.FAILED},
        lambda led, job: led.source_changed(job, (9, 9, 9, 9), "changed"),
    ),
    "begin_create": (
        {State.QUEUED, State.CREATING, State.UPLOADING},
        lambda led, job: led.begin_create(job, "name", 1.0, 1.0),
    ),
    "record_created": (
        {State.CREATING},
        lambda led, job: led.record_created(job.id, "new-record", "new-video", None),
    ),
    "chunk_acked": ({State.UPLOADING}, lambda led, job: led.chunk_acked(job, 5)),
    "sent": ({State.UPLOADING}, lambda led, job: led.sent(job, "sha", 1.0, 2.0)),
    "restart_upload": (
        {State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING},
        lambda led, job: led.restart_upload(job, "refused", whole_file=False),
    ),
    "record_gone": (
        {State.QUEUED, State.CREATING, State.UPLOADING},
        lambda led, job: led.record_gone(job),
    ),
    "adopt": (
        {State.QUEUED, State.CREATING, State.UPLOADING},
        lambda led, job: led.adopt(job, "r2", "v2", "name", "sha", ready=True),
    ),
    "resend": ({State.CONFIRMING}, lambda led, job: led.resend(job)),
    "confirmed": ({State.CONFIRMING}, lambda led, job: led.confirmed(job, 1.0, kept=True)),
    "fail": (
        {State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING},
        lambda led, job: led.fail(job, "why", "detail", delete_record=True),
    ),
    "retry": ({State.FAILED}, lambda led, job: led.retry([job.id], force=False)),
}


def _record_of(state: State) -> dict[str, Any]:
    """A job in ``state`` has a record from uploading on (and none before)."""
    if state in (State.UPLOADING, State.CONFIRMING, State.DONE):
        return {"record_id": "r1", "video_id": "v1"}
    return {}


async def _row(ledger: SqliteLedger, job_id: int) -> tuple[Any, ...] | None:
    found = await ledger.find_job(job_id)
    return None if found is None else dataclasses.astuple(found)


async def _job_in(ledger: SqliteLedger, state: State, n: int) -> Job:
    return await add_job_in(
        ledger, state, path=f"/x/{n}.ts", root="/x", snapshot=(1, n, n, 1), **_record_of(state)
    )


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
async def test_a_transition_leaves_only_the_states_it_names(
    opened: Opener, tmp_path: Path, name: str
) -> None:
    allowed, call = TRANSITIONS[name]
    ledger = await opened()
    try:
        for n, state in enumerate(State):
            job = await _job_in(ledger, state, n)
            before = await _row(ledger, job.id)
            deletions = await ledger.pending_deletions()
            happened = await call(ledger, job)
            after = await _row(ledger, job.id)
            if state in allowed:
                assert happened, (name, state)
                assert after != before, (name, state)
            else:
                assert not happened, (name, state)  # says so...
                assert after == before, (name, state)  # ...and changed nothing
                if name != "record_created":  # its record, too late, is queued for deletion
                    assert await ledger.pending_deletions() == deletions, (name, state)
    finally:
        await ledger.close()


@pytest.mark.parametrize(
    "name", sorted(set(TRANSITIONS) - {"forget", "skip_duplicate", "queue", "retry"})
)
async def test_a_transition_refuses_a_job_that_moved_on(
    opened: Opener, tmp_path: Path, name: str
) -> None:
    """The caller's Job is stale: in the same state, the job has another record since (it
    went back and on meanwhile). Nothing is written about the old one."""
    allowed, call = TRANSITIONS[name]
    state = sorted(allowed, key=list(State).index)[0]
    ledger = await opened()
    try:
        seen = await _job_in(ledger, state, 1)
        await set_state(ledger, seen.id, state, record_id="other", video_id="v9")
        before = await _row(ledger, seen.id)
        assert not await call(ledger, seen)
        assert await _row(ledger, seen.id) == before
    finally:
        await ledger.close()


async def test_record_created_too_late_queues_the_new_record_for_deletion(
    opened: Opener, tmp_path: Path
) -> None:
    ledger = await opened()
    try:
        job = await _job_in(ledger, State.WAITING, 1)  # went back while the POST was out
        assert not await ledger.record_created(job.id, "made-meanwhile", "v", None)
        assert [d.record_id for d in await ledger.due_deletions(float("inf"))] == ["made-meanwhile"]
    finally:
        await ledger.close()


async def test_update_refuses_to_change_a_state(opened: Opener) -> None:
    ledger = await opened()
    try:
        job = await ledger.add_job(path="/x/a.ts", root="/x", snapshot=(1, 2, 3, 4))
        with pytest.raises(LedgerError, match="transition"):
            await ledger.update(job.id, state=State.DONE)
        with pytest.raises(LedgerError, match="transition"):
            await ledger.update_current(job, state=State.QUEUED)
        assert (await ledger.get_job(job.id)).state is State.WAITING
    finally:
        await ledger.close()


async def test_the_upload_path_goes_through_in_order(opened: Opener) -> None:
    """waiting -> queued -> creating -> uploading -> confirming -> done, each committed."""
    ledger = await opened()
    try:
        job = await ledger.add_job(path="/x/a.ts", root="/x", snapshot=(10, 2, 3, 4))
        assert await ledger.queue([Queueing(job.id, (10, 2, 3, 4), "print")]) == 1
        job = await ledger.get_job(job.id)
        assert await ledger.begin_create(job, "a", 5.0, 5.0)
        assert await ledger.record_created(job.id, "rec", "vid", 4)
        job = await ledger.get_job(job.id)
        assert (job.state, job.record_id, job.chunk_size) == (State.UPLOADING, "rec", 4)
        assert await ledger.chunk_acked(job, 4)
        assert await ledger.sent(job, "sha", 6.0, 7.0)
        job = await ledger.get_job(job.id)
        assert (job.state, job.bytes_acked, job.sha256) == (State.CONFIRMING, 10, "sha")
        assert await ledger.confirmed(job, 8.0, kept=True)
        job = await ledger.get_job(job.id)
        assert (job.state, job.done_at, job.after_done, job.final_path) == (
            State.DONE,
            8.0,
            1,
            "/x/a.ts",
        )
    finally:
        await ledger.close()


async def test_source_returned_takes_up_only_a_job_failed_source_missing(
    opened: Opener, tmp_path: Path
) -> None:
    """The file is back: only a job failed because it had gone moves (to waiting, its
    partial record queued for deletion); every other job, failed otherwise included, stays."""
    ledger = await opened()
    try:
        for n, state in enumerate(State):
            job = await _job_in(ledger, state, n)
            before = await _row(ledger, job.id)
            assert not await ledger.source_returned(job.id, (7, 7, 7, 7)), state
            assert await _row(ledger, job.id) == before, state
        gone = await _job_in(ledger, State.FAILED, 99)
        await set_state(
            ledger, gone.id, State.FAILED, fail_reason="source_missing", record_id="r9", attempts=3
        )
        assert await ledger.source_returned(gone.id, (7, 7, 7, 7))
        back = await ledger.get_job(gone.id)
        assert (back.state, back.attempts, back.record_id, back.size) == (State.WAITING, 0, None, 7)
        assert [d.record_id for d in await ledger.due_deletions(float("inf"))] == ["r9"]
        assert not await ledger.source_returned(gone.id, (7, 7, 7, 7))  # once
    finally:
        await ledger.close()
