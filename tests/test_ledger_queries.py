"""Ledger queries that answer for many jobs at once: the unsent files, the content twins."""

from __future__ import annotations

from pathlib import Path

from ingestd.ledger.store import Ledger, State


async def test_unsent_counts_in_sqlite_and_names_the_oldest(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "ledger.db")
    try:
        empty = await ledger.unsent()
        assert (empty.files, empty.queued, empty.oldest) == (0, 0, None)
        ids = {}
        for number, state in enumerate(
            [State.QUEUED, State.WAITING, State.QUEUED, State.UPLOADING, State.CONFIRMING,
             State.DONE, State.FAILED, State.CREATING]
        ):  # fmt: skip
            job = await ledger.add_job(
                path=f"/x/{number}.ts", root="/x", snapshot=(1, number, number, 1), state=state
            )
            # Discovered in reverse order: the waiting file (number 1) is not the oldest...
            await ledger.update(job.id, discovered_at=1000.0 - number)
            ids[number] = job.id
        await ledger.update(ids[1], discovered_at=10.0)  # ...until now

        unsent = await ledger.unsent(busy={ids[3], ids[4]})
        assert unsent.files == 5  # waiting, 2 queued, uploading, creating; not confirming
        assert unsent.queued == 3  # the 2 queued and the creating one; the uploading is busy
        assert unsent.oldest is not None and unsent.oldest.id == ids[1]
    finally:
        await ledger.close()


async def test_twins_of_a_batch_are_what_twin_of_finds_one_by_one(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "ledger.db")
    try:
        made = [
            ("A", State.DONE), ("A", State.QUEUED), ("A", State.WAITING), ("B", State.FAILED),
            ("B", State.WAITING), ("C", State.WAITING), ("D", State.UPLOADING),
            ("D", State.CONFIRMING), ("D", State.WAITING),
        ]  # fmt: skip
        ids = []
        for number, (print_, state) in enumerate(made):
            job = await ledger.add_job(
                path=f"/x/{number}.ts", root="/x", snapshot=(1, number, number, 1), state=state
            )
            await ledger.update(job.id, fingerprint=print_)
            ids.append(job.id)
        asked = {ids[n]: made[n][0] for n in (1, 2, 4, 5, 8)}
        twins = await ledger.twins_of(asked)
        found = {job_id: twin.id if twin else None for job_id, twin in twins.items()}
        assert found == {ids[1]: ids[0], ids[2]: ids[0], ids[4]: None, ids[5]: None, ids[8]: ids[7]}
        for job_id, print_ in asked.items():
            one = await ledger.twin_of(print_, job_id)
            assert found[job_id] == (one.id if one else None)
        assert await ledger.twins_of({}) == {}
    finally:
        await ledger.close()


async def test_waiting_gives_what_a_settle_pass_needs(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "ledger.db")
    try:
        first = await ledger.add_job(
            path="/x/a.ts", root="/x", snapshot=(10, 20, 30, 40), state=State.WAITING
        )
        await ledger.add_job(path="/x/b.ts", root="/x", snapshot=(1, 2, 3, 4), state=State.QUEUED)
        forced = await ledger.add_job(
            path="/x/c.ts", root="/x", snapshot=(5, 6, 7, 8), state=State.WAITING
        )
        await ledger.update(forced.id, force=1)
        waiting = await ledger.waiting()
        assert [(w.id, w.path, w.force, w.snapshot) for w in waiting] == [
            (first.id, "/x/a.ts", False, (10, 20, 30, 40)),
            (forced.id, "/x/c.ts", True, (5, 6, 7, 8)),
        ]
    finally:
        await ledger.close()


async def test_update_many_commits_every_change_in_one_transaction(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "ledger.db")
    try:
        jobs = [
            await ledger.add_job(
                path=f"/x/{n}.ts", root="/x", snapshot=(n, n, n, n), state=State.WAITING
            )
            for n in range(4)
        ]
        await ledger.update_many(
            [
                (jobs[0].id, {"state": State.QUEUED, "fingerprint": "f0"}),
                (jobs[1].id, {"wait_reason": "still being written"}),
                (jobs[2].id, {"state": State.QUEUED, "fingerprint": "f2"}),
            ]
        )
        after = [await ledger.get_job(job.id) for job in jobs]
        assert [(j.state, j.fingerprint, j.wait_reason) for j in after] == [
            (State.QUEUED, "f0", None),
            (State.WAITING, None, "still being written"),
            (State.QUEUED, "f2", None),
            (State.WAITING, None, None),
        ]
        assert after[0].updated_at >= jobs[0].updated_at
    finally:
        await ledger.close()
