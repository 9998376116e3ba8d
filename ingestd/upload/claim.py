"""Sending only while the job is this daemon's: the fence of a shared ledger, at the wire.

On a shared ledger (``ledger/postgres/claims.py``) a daemon's claim on a job lasts
until its deadline, which every renewal pushes out. :func:`while_claimed` refuses
to begin a request once the claim is used up and aborts one still on the wire
when it runs out, following the renewals as they come, so a request may outlast
one lease as long as the claim keeps being renewed. On a one-machine ledger the
claim never ends and this costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

from ingestd.errors import ClaimEnded
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job
from ingestd.logs import get_logger

log = get_logger("ingestd.upload.claim")

# How often a request on the wire looks at its claim's deadline (renewals move it).
FOLLOW_EVERY = 0.5


@contextlib.asynccontextmanager
async def while_claimed(ledger: JobLedger, job: Job) -> AsyncIterator[None]:
    """The body runs while ``ledger`` says this daemon holds ``job``; else ClaimEnded."""
    left = ledger.lease_left(job.id)
    if left <= 0:
        raise claim_ended(job, "this node could not renew its claim on the job in time")
    if math.isinf(left):
        yield
        return
    loop = asyncio.get_running_loop()
    bound = asyncio.timeout(left)

    async def follow() -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            with contextlib.suppress(RuntimeError):  # the body ended meanwhile
                bound.reschedule(loop.time() + ledger.lease_left(job.id))

    follower = asyncio.create_task(follow())
    try:
        async with bound:
            yield
    except TimeoutError:
        if bound.expired():
            raise claim_ended(job, "the claim ran out while a chunk was on the wire") from None
        raise
    finally:
        follower.cancel()


def claim_ended(job: Job, why: str) -> ClaimEnded:
    """A shared ledger's claim on ``job`` ends here: logged once, where it ended."""
    log.warning("job.claim_ended", job_id=job.id, path=job.path, why=why)
    return ClaimEnded(why)
