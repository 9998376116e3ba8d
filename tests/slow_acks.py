"""``python tests/slow_acks.py ARGS``: ``ingestd ARGS`` whose chunk commits are slow.

Every ``chunk_acked`` waits ``$SLOW_ACKS`` seconds before it writes, as on a
disk whose fsync lags, so that chunk N's commit is surely still in flight when
chunk N+1 is answered: the worst case of the commit that lags one chunk behind.
"""

from __future__ import annotations

import asyncio
import os
import runpy

from ingestd.ledger.model import Job
from ingestd.ledger.transitions import Transitions

_original = Transitions.chunk_acked


async def _slow_chunk_acked(self: Transitions, job: Job, bytes_acked: int) -> bool:
    await asyncio.sleep(float(os.environ["SLOW_ACKS"]))
    return await _original(self, job, bytes_acked)


if __name__ == "__main__":
    Transitions.chunk_acked = _slow_chunk_acked  # type: ignore[method-assign]
    runpy.run_module("ingestd", run_name="__main__")
