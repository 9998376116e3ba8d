"""The fake Valt server as the bench runs it: its own process, bytes counted and hashed, not kept.

``python -m bench.server --port 0`` prints ``fake-valt listening on URL`` like
``ingestd fake-valt --discard``; with ``--count-only`` it does not hash the bytes
either (it counts them and holds the chunk rules), so that it is not the slowest
party when a client sends at loopback rates. It adds what the bench measures at
the server:

- ``GET /_bench/stats``: wall-clock times (``time.time()``, comparable across
  processes on one machine) of each record's first upload request and of its last
  answered one, bytes per record, request counts, requests that carried an
  ``Expect`` header, how many client connections sent uploads, and how many
  chunk requests for one video overlapped (two senders on one job);
- ``GET /_bench/timeline?since=T``: (time, total upload bytes) every 50 ms, from
  which the bench reads rates and when a rate changed.

Everything else is the package's own fake (``ingestd.fake_valt``), unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import time
from dataclasses import dataclass, field

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ingestd.fake_valt import FakeValt
from ingestd.fake_valt.context import STATE_KEY

USERNAME = "bench"
PASSWORD = "bench-password"
SAMPLE_EVERY = 0.05
UPLOAD_ROUTE = "/api/v3/records/{record_id}/videos/{video_id}"


@dataclass
class _Seen:
    first_request_at: dict[str, float] = field(default_factory=dict)
    last_answer_at: dict[str, float] = field(default_factory=dict)
    completed_at: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    uploads: int = 0
    expect_headers: int = 0
    upload_peers: set[str] = field(default_factory=set)
    timeline: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=40_000)
    )


class BenchValt(FakeValt):
    """The package's fake plus the bench's counters (see the module docstring)."""

    def __init__(self, *, hash_bytes: bool = True) -> None:
        super().__init__(users={USERNAME: PASSWORD}, keep_bytes=False, hash_bytes=hash_bytes)
        self.seen = _Seen()

    def make_app(self) -> web.Application:
        app = super().make_app()
        app.middlewares.append(self._observe)
        app.router.add_get("/_bench/stats", self._stats)
        app.router.add_get("/_bench/timeline", self._timeline)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/v3/"):
            return await handler(request)
        seen = self.seen
        seen.requests += 1
        if hdrs.EXPECT in request.headers:
            seen.expect_headers += 1
        resource = request.match_info.route.resource
        is_upload = resource is not None and resource.canonical == UPLOAD_ROUTE
        if not is_upload:
            return await handler(request)
        seen.uploads += 1
        record_id = request.match_info["record_id"]
        seen.first_request_at.setdefault(record_id, time.time())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.upload_peers.add(repr(peer))
        try:
            return await handler(request)
        finally:
            now = time.time()
            seen.last_answer_at[record_id] = now
            _, video = self.state.store.find_video(record_id, request.match_info["video_id"])
            if video is not None and video.complete:
                seen.completed_at.setdefault(record_id, now)

    async def _stats(self, request: web.Request) -> web.Response:
        state = request.app[STATE_KEY]
        seen = self.seen
        records = {}
        for record in state.store.records.values():
            video = record.videos[0] if record.videos else None
            records[record.name] = {
                "id": record.id,
                "received": video.received if video else 0,
                "total": video.total if video else None,
                "sha256": video.sha256 if video else None,
                "first_request_at": seen.first_request_at.get(record.id),
                "last_answer_at": seen.last_answer_at.get(record.id),
                "completed_at": seen.completed_at.get(record.id),
            }
        if request.query.get("records") == "0":
            records = {}
        return web.json_response(
            {
                "now": time.time(),
                "upload_bytes": state.upload_bytes_received,
                "requests": seen.requests,
                "request_counts": dict(state.request_counts),
                "uploads": seen.uploads,
                "expect_headers": seen.expect_headers,
                "upload_connections": len(seen.upload_peers),
                # Every record, also two of one name (``records`` below keeps one per name).
                "record_count": len(state.store.records),
                "overlapping_chunks": state.overlapping_chunks,
                "chunk_repeats": state.chunk_repeats,
                "records": records,
            }
        )

    async def _timeline(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "0"))
        points = [point for point in self.seen.timeline if point[0] >= since]
        return web.json_response(points)

    async def sample(self, stop: asyncio.Event) -> None:
        """Total upload bytes every SAMPLE_EVERY seconds, for rates over time."""
        while not stop.is_set():
            self.seen.timeline.append((time.time(), self.state.upload_bytes_received))
            try:
                async with asyncio.timeout(SAMPLE_EVERY):
                    await stop.wait()
            except TimeoutError:
                pass


async def _serve(port: int, hash_bytes: bool) -> None:
    fake = BenchValt(hash_bytes=hash_bytes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await fake.start("127.0.0.1", port)
    print(f"fake-valt listening on {fake.url}", flush=True)
    sampler = asyncio.create_task(fake.sample(stop))
    await stop.wait()
    await sampler
    await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--count-only", action="store_true", help="count the bytes and check ranges, no sha256"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, hash_bytes=not args.count_only))


if __name__ == "__main__":
    main()


__all__ = ["PASSWORD", "USERNAME", "BenchValt", "main"]
