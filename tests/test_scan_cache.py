"""Rescans keep done jobs in memory, and a settle pass queues its finished files together."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import intake_for_tests, random_file
from ledger_support import set_state

from ingestd.intake.waiting import SETTLED
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger


async def _finish_all(ledger: SqliteLedger) -> None:
    """As if every live job had been uploaded and confirmed."""
    for job in await ledger.jobs_in([s for s in State if s not in SETTLED]):
        await set_state(ledger, job.id, State.DONE, done_at=1.0)


async def test_rescans_read_only_live_jobs_and_still_see_a_replaced_file(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        random_file(export / "a.mkv", 1000, seed=1)
        random_file(export / "b.mkv", 1000, seed=2)
        assert await intake.scan("startup") == 2
        await _finish_all(ledger)

        # From now on no scan reads the whole ledger.
        async def no_full_read() -> None:
            raise AssertionError("known_snapshots() read the whole ledger again")

        monkeypatch.setattr(ledger, "known_snapshots", no_full_read)
        assert await intake.scan("interval") == 0  # done and unchanged
        assert await intake.scan("interval") == 0

        random_file(export / "a.mkv", 2000, seed=3)  # replaced after done: a new job
        assert await intake.scan("interval") == 1
        jobs = [job for job in await ledger.jobs_in(list(State)) if job.path.endswith("a.mkv")]
        assert [job.state for job in jobs] == [State.DONE, State.WAITING]
        assert jobs[1].size == 2000

        await _finish_all(ledger)  # the new job settles between scans: the cache learns it
        assert await intake.scan("interval") == 0
        random_file(export / "c.mkv", 10, seed=4)
        assert await intake.scan("interval") == 1
    finally:
        await ledger.close()


async def test_a_forgotten_job_does_not_hide_its_file(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        random_file(export / "a.mkv", 1000, seed=1)
        assert await intake.scan("startup") == 1
        [job] = await ledger.jobs_in([State.WAITING])
        await ledger.forget(job.id)  # its file vanished while waiting...
        assert await intake.scan("interval") == 1  # ...and came back: a job again
        assert len(await ledger.jobs_in([State.WAITING])) == 1
    finally:
        await ledger.close()


async def test_one_pass_queues_one_of_two_identical_files(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path, settle=0)
    try:
        for name in ("one.mkv", "two.mkv", "other.mkv"):
            random_file(export / name, 5000, seed=9 if name != "other.mkv" else 10)
        assert await intake.scan("startup") == 3
        await intake.settle()
        jobs = {Path(job.path).name: job for job in await ledger.jobs_in(list(State))}
        assert jobs["other.mkv"].state == State.QUEUED
        states = sorted((jobs["one.mkv"].state, jobs["two.mkv"].state))
        assert states == [State.QUEUED, State.WAITING]
        waiting = next(job for job in jobs.values() if job.state == State.WAITING)
        queued = next(j for n, j in jobs.items() if j.state == State.QUEUED and n != "other.mkv")
        assert waiting.wait_reason == f"same content as job {queued.id}, in progress"
    finally:
        await ledger.close()
