"""Everything one fake server knows, shared by its handlers and middlewares.

Kept apart from the aiohttp wiring so handlers can import it without a cycle,
and so that :class:`~ingestd.fake_valt.server.FakeValt` is only a thin face.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from aiohttp import web

from ingestd.fake_valt.auth import Accounts
from ingestd.fake_valt.directory import Directory
from ingestd.fake_valt.faults import FaultDice, Faults
from ingestd.fake_valt.state import Store

REQUEST_LOG_CAP = 100_000
"""Entries kept in ``request_log``; the oldest go first. Counts are never capped."""

SEED_CONTENT = b"seeded video content\n"


class LoggedRequest(NamedTuple):
    """One request as the fake saw it. ``path`` has no query string (tokens)."""

    method: str
    path: str
    status: int
    """HTTP status sent, or 0 when the connection was dropped or abandoned."""
    content_range: str | None


class ServerState:
    """Records, accounts, fault switches and counters of one fake server."""

    def __init__(
        self,
        store: Store,
        accounts: Accounts,
        directory: Directory,
        faults: Faults,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.directory = directory
        self.dice = FaultDice(faults.seed)
        self._faults = faults
        self.request_log: list[LoggedRequest] = []
        self.request_counts: dict[str, int] = {}
        self.upload_bytes_received = 0
        self.chunk_repeats = 0
        self.chunks_in_flight: dict[tuple[str, str], int] = {}
        """Chunk requests inside the upload handler, by (record id, video id)."""
        self.overlapping_chunks = 0
        """Chunk requests that began while another one for the same video was in flight:
        two senders on one job at once (one sender's chunks follow each other)."""
        self.overlapping_records: list[str] = []
        """The record id of each overlap, in order."""
        self.stopping = asyncio.Event()

    @property
    def faults(self) -> Faults:
        """The live fault switches (mutable)."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        self.dice.reseed(faults.seed)

    def set_faults(self, changes: Mapping[str, Any]) -> Faults:
        """Merge validated changes; a new ``seed`` restarts the random sequence."""
        updated = self._faults.updated(changes)
        if "seed" in changes:
            self.faults = updated
        else:
            self._faults = updated
        return updated

    def log_request(self, entry: LoggedRequest, route: str) -> None:
        """Count a request under ``METHOD /route-pattern`` and keep it in the log."""
        key = f"{entry.method} {route}"
        self.request_counts[key] = self.request_counts.get(key, 0) + 1
        self.request_log.append(entry)
        if len(self.request_log) > REQUEST_LOG_CAP:
            # Trim in batches so a long run does not shift the list on every request.
            del self.request_log[: REQUEST_LOG_CAP // 10]

    @contextlib.contextmanager
    def chunk_in_flight(self, record_id: str, video_id: str) -> Iterator[None]:
        """Count one chunk request for a video while it lasts, and an overlap if another
        one for the same video is in flight already."""
        key = (record_id, video_id)
        if self.chunks_in_flight.get(key, 0) > 0:
            self.overlapping_chunks += 1
            self.overlapping_records.append(record_id)
        self.chunks_in_flight[key] = self.chunks_in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            left = self.chunks_in_flight[key] - 1
            if left:
                self.chunks_in_flight[key] = left
            else:
                del self.chunks_in_flight[key]

    async def pause(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: until stopping); True if the server is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    def seed_record(
        self,
        name: str = "Interview",
        *,
        created: int | None = None,
        author: str = "other-machine",
        with_video: bool = False,
    ) -> str:
        """Add a record as another machine (or an earlier run) would have left it.

        ``with_video``: the video holds complete content and is ready; else it
        is empty, as after a create-upload whose upload never came.
        """
        record = self.store.create(name, author=author, created=created)
        if with_video:
            self.store.write_whole(record.videos[0], SEED_CONTENT, ready_at=time.monotonic())
        return record.id

    def snapshot(self) -> dict[str, Any]:
        """The JSON-able state that ``GET /_fake/state`` answers."""
        return {
            "records": [record.state_view() for record in self.store.records.values()],
            "deleted": list(self.store.deleted),
            "requests": dict(self.request_counts),
            "upload_bytes_received": self.upload_bytes_received,
            "chunk_repeats": self.chunk_repeats,
            "overlapping_chunks": self.overlapping_chunks,
            "overlapping_records": list(self.overlapping_records),
            "faults_injected": dict(self.dice.injected),
            "faults": self._faults.as_dict(),
            "logins": self.accounts.logins,
            "login_failures": self.accounts.login_failures,
        }


STATE_KEY = web.AppKey("state", ServerState)
