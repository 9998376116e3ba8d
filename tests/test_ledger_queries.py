"""Ledger queries that answer for many jobs at once: the unsent files, the content twins."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import Opener
from ledger_support import add_job_in

from ingestd.disk.judged import ANY_DEVICE
from ingestd.ledger.model import Queueing, State
from ingestd.ledger.store import SqliteLedger


async def test_unsent_counts_in_the_ledger_and_names_the_oldest(opened: Opener) -> None:
    ledger = await opened()
    try:
        empty = await ledger.unsent()
        assert (empty.files, empty.queued, empty.oldest) == (0, 0, None)
        ids = {}
        for number, state in enumerate(
            [State.QUEUED, State.WAITING, State.QUEUED, State.UPLOADING, State.CONFIRMING,
             State.DONE, State.FAILED, State.CREATING]
        ):  # fmt: skip
            job = await add_job_in(
                ledger, state, path=f"/x/{number}.ts", root="/x", snapshot=(1, number, number, 1)
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


async def test_twins_of_a_batch_are_what_twin_of_finds_one_by_one(opened: Opener) -> None:
    ledger = await opened()
    try:
        made = [
            ("A", State.DONE), ("A", State.QUEUED), ("A", State.WAITING), ("B", State.FAILED),
            ("B", State.WAITING), ("C", State.WAITING), ("D", State.UPLOADING),
            ("D", State.CONFIRMING), ("D", State.WAITING),
        ]  # fmt: skip
        ids = []
        for number, (print_, state) in enumerate(made):
            job = await add_job_in(
                ledger, state, path=f"/x/{number}.ts", root="/x", snapshot=(1, number, number, 1)
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


async def test_waiting_gives_what_a_settle_pass_needs(opened: Opener) -> None:
    ledger = await opened()
    try:
        first = await ledger.add_job(path="/x/a.ts", root="/x", snapshot=(10, 20, 30, 40))
        await add_job_in(ledger, State.QUEUED, path="/x/b.ts", root="/x", snapshot=(1, 2, 3, 4))
        forced = await ledger.add_job(path="/x/c.ts", root="/x", snapshot=(5, 6, 7, 8))
        await ledger.update(forced.id, force=1)
        waiting = await ledger.waiting()
        # A shared ledger knows no device: another host numbers the share otherwise.
        a_dev, c_dev = (ANY_DEVICE, ANY_DEVICE) if ledger.shared else (40, 8)
        assert [(w.id, w.path, w.force, w.snapshot) for w in waiting] == [
            (first.id, "/x/a.ts", False, (10, 20, 30, a_dev)),
            (forced.id, "/x/c.ts", True, (5, 6, 7, c_dev)),
        ]
    finally:
        await ledger.close()


async def test_queue_commits_every_file_in_one_transaction(tmp_path: Path) -> None:
    """The settle loop queues a pass's files together: one commit, seen whole or not at all.

    A second connection watches each statement the ledger sends: while the queueing
    is under way it must see none of the files queued (committed one by one, it would
    see the first before the last is written), and after it, all of them.
    """
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    watcher = sqlite3.connect(path, check_same_thread=False)  # asked from the ledger thread
    try:
        jobs = [
            await ledger.add_job(path=f"/x/{n}.ts", root="/x", snapshot=(n, n, n, n))
            for n in range(4)
        ]
        await ledger.update(jobs[1].id, wait_reason="still being written")
        seen: list[int] = []

        def look(statement: str) -> None:
            if statement.lstrip().upper().startswith(("UPDATE", "COMMIT")):
                query = "SELECT COUNT(*) FROM jobs WHERE state='queued'"
                seen.append(int(watcher.execute(query).fetchone()[0]))

        # The sqlite3 connection under aiosqlite, told in its own thread.
        inner = ledger._conn._conn
        await inner._execute(inner._conn.set_trace_callback, look)
        queued = await ledger.queue(
            [
                Queueing(jobs[0].id, (10, 10, 10, 10), "f0"),
                Queueing(jobs[2].id, (12, 12, 12, 12), "f2"),
                Queueing(jobs[3].id, (13, 13, 13, 13), "f3"),
            ]
        )
        await inner._execute(inner._conn.set_trace_callback, None)
        assert queued == 3
        assert seen and set(seen) == {0}, seen  # nothing visible before the one COMMIT
        after = [await ledger.get_job(job.id) for job in jobs]
        assert [(j.state, j.fingerprint, j.size, j.wait_reason) for j in after] == [
            (State.QUEUED, "f0", 10, None),
            (State.WAITING, None, 1, "still being written"),
            (State.QUEUED, "f2", 12, None),
            (State.QUEUED, "f3", 13, None),
        ]
        assert after[0].updated_at >= jobs[0].updated_at
        count = "SELECT COUNT(*) FROM jobs WHERE state='queued'"
        assert watcher.execute(count).fetchone()[0] == 3
    finally:
        watcher.close()
        await ledger.close()
