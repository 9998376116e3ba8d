"""Ledger queries that answer for many jobs at once: the unsent files, the content twins."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from conftest import Opener
from ledger_support import add_job_in, set_state

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


async def test_newest_identities_pages_the_newest_job_of_each_path(opened: Opener) -> None:
    ledger = await opened()
    try:
        old = await add_job_in(ledger, State.DONE, path="/x/a.ts", root="/x", snapshot=(1, 1, 1, 1))
        new = await ledger.add_job(path="/x/a.ts", root="/x", snapshot=(2, 2, 2, 1))  # changed
        others = [
            await add_job_in(ledger, state, path=f"/x/{n}.ts", root="/x", snapshot=(n, n, n, 1))
            for n, state in ((3, State.DONE), (4, State.SKIPPED), (5, State.QUEUED))
        ]
        rows, after = [], 0
        while page := await ledger.newest_identities(after, 2):
            assert len(page) <= 2
            rows += page
            after = page[-1][0]
        assert [tuple(row) for row in rows] == [
            (new.id, "/x/a.ts", 2, 2, 2, "waiting"),  # not the done one it replaced
            *((job.id, job.path, job.size, job.mtime_ns, job.inode, job.state.value)
              for job in others),
        ]  # fmt: skip
        assert old.id not in {row[0] for row in rows}
    finally:
        await ledger.close()


async def test_counts_are_kept_by_the_ledger_not_counted(tmp_path: Path) -> None:
    """Jobs per state follow every change (new jobs, transitions, forgetting), and asking
    for them reads no row of ``jobs``: a million done files cost nothing to count."""
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    try:
        added = await ledger.add_jobs(
            root="/x", files=[(f"/x/{n}.ts", (n, n, n, 1)) for n in range(6)]
        )
        ids = [added[f"/x/{n}.ts"] for n in range(6)]
        for job_id, state in zip(
            ids[:4], (State.DONE, State.DONE, State.FAILED, State.QUEUED), strict=True
        ):
            await set_state(ledger, job_id, state)
        await set_state(ledger, ids[0], State.DONE)  # no change of state: counted once
        await ledger.forget(ids[5])  # waiting, gone
        await ledger.retry([ids[2]], force=False)  # failed -> queued
        statements: list[str] = []
        inner = ledger._conn._conn
        await inner._execute(inner._conn.set_trace_callback, statements.append)
        counts = await ledger.counts()
        await inner._execute(inner._conn.set_trace_callback, None)
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        assert {k: v for k, v in counts.items() if v} == dict(rows)
        assert counts["done"] == 2 and counts["queued"] == 2 and counts["waiting"] == 1
        assert statements and not [s for s in statements if re.search(r"\bFROM jobs\b", s)]
    finally:
        await ledger.close()


async def test_a_ledger_without_kept_counts_gets_them_at_open(tmp_path: Path) -> None:
    """A ledger from before (or one whose counts were dropped) is counted once at open;
    read-only, it is counted row by row instead."""
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    await ledger.add_jobs(root="/x", files=[(f"/x/{n}.ts", (n, n, n, 1)) for n in range(3)])
    await ledger.close()
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "DROP TRIGGER jobs_count_insert; DROP TRIGGER jobs_count_delete; "
            "DROP TRIGGER jobs_count_update; DELETE FROM meta WHERE key LIKE 'jobs_in.%';"
        )
        conn.execute(
            "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, discovered_at, "
            "updated_at) VALUES('/x/d.ts', '/x', 'done', 1, 1, 9, 1, 0, 0)"
        )
    reader = await SqliteLedger.open(path, readonly=True)
    try:
        assert (await reader.counts())["done"] == 1  # no triggers yet: counted
    finally:
        await reader.close()
    ledger = await SqliteLedger.open(path)
    try:
        counts = await ledger.counts()
        assert (counts["waiting"], counts["done"]) == (3, 1)
        await ledger.add_job(path="/x/e.ts", root="/x", snapshot=(5, 5, 5, 1))
        assert (await ledger.counts())["waiting"] == 4
    finally:
        await ledger.close()


async def test_kept_counts_add_no_table_an_older_ingestd_would_refuse(tmp_path: Path) -> None:
    """An ingestd refuses a ledger holding a table it does not know (check_integrity), so a
    new table would make a downgrade refuse the ledger: the counts live in ``meta``."""
    path = tmp_path / "ledger.db"
    ledger = await SqliteLedger.open(path)
    await ledger.add_job(path="/x/a.ts", root="/x", snapshot=(1, 1, 1, 1))
    await ledger.close()
    with sqlite3.connect(path) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert tables == {"meta", "jobs", "deletions", "suspected_orphans"}  # those of version 5
    assert version == ("5",)
