"""``bytes_acked`` committed one chunk behind the wire.

design.md allows one overlap among the ledger's commits: chunk N's
``bytes_acked`` may be committed while chunk N+1 is on the wire. Waiting for
that fsynced commit between two chunks would leave the connection idle for
as long as the commit takes (a few ms, against ~6 ms for an 8 MiB chunk at
loopback rates). The commit therefore runs as a task of its own and is
awaited once the next chunk has been answered, before any other write for
the job: the ledger is never more than one chunk behind the server, so a
resume resends at most two chunks, each wholly inside what the server holds
(a harmless repeat).
"""

from __future__ import annotations

import asyncio
import contextlib

from ingestd.failpoints import failpoint
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job


class MovedOn(Exception):
    """The ledger refused a chunk's commit: the job moved on meanwhile (reset, retried, or
    on a shared ledger taken by another node); the worker lets go of it."""


class LaggingAcks:
    """At most one ``chunk_acked`` commit of ``job`` in flight."""

    def __init__(self, ledger: JobLedger, job: Job) -> None:
        self.ledger = ledger
        self.job = job
        self._pending: asyncio.Task[bool] | None = None

    def start(self, bytes_acked: int) -> None:
        """Commit ``bytes_acked`` in the background (the previous commit was settled)."""
        assert self._pending is None, "settle() the previous commit first"
        self._pending = asyncio.create_task(self._commit(bytes_acked))

    async def _commit(self, bytes_acked: int) -> bool:
        if not await self.ledger.chunk_acked(self.job, bytes_acked):
            return False
        failpoint("after_chunk_committed")
        return True

    async def settle(self) -> None:
        """Wait for the commit in flight, if any; MovedOn if the ledger refused it. Its
        errors (LedgerUnwritable) are raised here."""
        pending, self._pending = self._pending, None
        if pending is not None and not await pending:
            raise MovedOn(f"job {self.job.id} moved on while its chunk was committed")

    async def abandon(self) -> None:
        """Let the commit in flight end, whatever it says (the upload is being cancelled:
        the cancellation, not the commit's outcome, is what goes on)."""
        with contextlib.suppress(Exception):
            await self.settle()
