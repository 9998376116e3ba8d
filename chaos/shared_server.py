"""What the fake server saw of the chunk requests: which overlaps were two senders.

The fake counts a chunk request that enters its upload handler while another one for the
same video is inside it (``overlapping_chunks``). That count also takes in a request
whose sender had given up on it before the other began: the fake's slow answers wait
3 s before the handler, longer than the client's 2 s ``valt.timeout``, and a request
that a node cut short at its claim's end, or a killed node's last one, can still be
read from the socket afterwards. Neither is a node sending: this log tells them apart.
For every chunk request it keeps when it entered and left the handler, its byte range,
which login session sent it (a number, never the token), and, when it met another
request for the same video inside, whether that one's sender was still connected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestd.fake_valt import FakeValtThread


@dataclass
class ChunkSeen:
    record_id: str
    video_id: str
    began: float
    """Wall clock, s."""
    ended: float | None
    range: str
    session: int
    client_gone: bool
    """Its connection was closing when the handler took it (a sender that gave up)."""
    met: list[tuple[int, bool]] = field(default_factory=list)
    """The requests for the same video inside when it entered: (their number, whether their
    sender was still connected)."""


class ChunkLog:
    """Every chunk request the fake took, in order (filled from the server's own thread)."""

    def __init__(self) -> None:
        self.seen: list[ChunkSeen] = []
        self._sessions: dict[str, int] = {}
        self._inside: dict[tuple[str, str], dict[int, Any]] = {}  # video -> number -> request

    def install(self, server: FakeValtThread) -> None:
        def wire(fake: Any) -> None:
            state = fake.state
            counted = state.chunk_in_flight

            def logged(record_id: str, video_id: str) -> Any:
                # The handler's own frame holds the request (the fake passes only ids).
                request = sys._getframe(1).f_locals.get("request")
                return self._watch(counted(record_id, video_id), record_id, video_id, request)

            setattr(state, "chunk_in_flight", logged)  # noqa: B010 - patching the instance

        server.call(wire)

    @contextlib.contextmanager
    def _watch(self, counted: Any, record_id: str, video_id: str, request: Any) -> Iterator[None]:
        token = str(request.query.get("access_token", "")) if request is not None else ""
        seen = ChunkSeen(
            record_id,
            video_id,
            time.time(),
            None,
            str(request.headers.get("Content-Range", "")) if request is not None else "",
            self._sessions.setdefault(token, len(self._sessions) + 1),
            _gone(request),
        )
        inside = self._inside.setdefault((record_id, video_id), {})
        seen.met = [(number, not _gone(other)) for number, other in inside.items()]
        number = len(self.seen)
        self.seen.append(seen)
        inside[number] = request
        try:
            with counted:
                yield
        finally:
            seen.ended = time.time()
            del inside[number]

    def overlaps(self) -> tuple[list[str], list[str]]:
        """Each pair of chunk requests for one video inside the handler at once: those
        whose senders were both connected (two senders), and the others (one of them
        given up on by its sender)."""
        senders: list[str] = []
        stale: list[str] = []
        for later in self.seen:
            for number, live in later.met:
                earlier = self.seen[number]
                pair = f"record {later.record_id}: {describe(earlier)} / {describe(later)}"
                (senders if live and not later.client_gone else stale).append(pair)
        return senders, stale

    def write(self, path: Path) -> None:
        """Every request as a JSON line (times as the daemons log them)."""
        with open(path, "w") as out:
            for number, seen in enumerate(list(self.seen)):
                fields = dataclasses.asdict(seen)
                fields["number"] = number
                fields["began"] = clock(seen.began)
                fields["ended"] = clock(seen.ended) if seen.ended is not None else None
                out.write(json.dumps(fields) + "\n")


def _gone(request: Any) -> bool:
    transport = getattr(request, "transport", None)
    return transport is None or bool(transport.is_closing())


def describe(seen: ChunkSeen) -> str:
    """``session 3 bytes 0-99/200 in 12:00:01.250-12:00:03.100`` (UTC, as the daemons log)."""
    ended = clock(seen.ended) if seen.ended is not None else "(still in)"
    gone = ", its sender gone" if seen.client_gone else ""
    return f"session {seen.session} {seen.range} in {clock(seen.began)}-{ended}{gone}"


def clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
