"""A node's claims as it sees them are the claims PostgreSQL holds for it.

A node sends a job's chunks while it believes it holds the job (``lease_left``); another
node may take the job once PostgreSQL says nobody holds it. So the one thing that must
never happen is a node believing it holds a job that PostgreSQL shows as free: two
nodes would send the same chunks at once (the shared-ledger campaign, chaos/shared.py,
found it: a worker's release on its way while the dispatcher took the job again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from ingestd.ledger.model import Queueing
from ingestd.ledger.postgres.store import PostgresLedger

ROOTS = {"export": "/share"}
ROUNDS = 10


@pytest.fixture
async def nodes(pg_url: str) -> AsyncIterator[tuple[PostgresLedger, PostgresLedger]]:
    a = await PostgresLedger.open(
        pg_url, password=None, node="a", lease=60, roots=ROOTS, migrate=True
    )
    b = await PostgresLedger.open(pg_url, password=None, node="b", lease=60, roots=ROOTS)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def owner(url: str, job_id: int) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT lease_owner FROM jobs WHERE id=%s", (job_id,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


async def queued_job(ledger: PostgresLedger) -> int:
    job = await ledger.add_job(path="/share/clip.mp4", root="/share", snapshot=(10, 1, 2, 3))
    await ledger.queue([Queueing(job.id, job.snapshot, "print")])
    return job.id


async def test_a_job_taken_again_while_its_release_is_on_its_way_is_held_by_both_or_neither(
    nodes: tuple[PostgresLedger, PostgresLedger], pg_url: str
) -> None:
    """The dispatcher takes a job again the moment a worker lets it go (pool.py: the worker
    is done with it, the dispatcher sees it due): whichever statement PostgreSQL runs first,
    the node's view and PostgreSQL's agree afterwards, and the other node cannot take a job
    this node goes on sending."""
    a, b = nodes
    job_id = await queued_job(a)
    for round_ in range(ROUNDS):
        assert [job.id for job in await a.due_jobs(time.time(), 1, [])] == [job_id]
        # The take first, the release right behind it (the release's own statement on
        # another pooled connection): the order of the interleaving that went wrong.
        take = asyncio.create_task(a.due_jobs(time.time(), 1, []))
        await asyncio.sleep(0)
        await a.release([job_id])
        await take
        believes = a.lease_left(job_id) > 0
        assert believes == (owner(pg_url, job_id) == "a"), f"round {round_}"
        if believes:
            assert await b.due_jobs(time.time(), 1, []) == [], f"round {round_}"
        await a.release([job_id])
        await b.release([job_id])
