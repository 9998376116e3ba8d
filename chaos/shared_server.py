"""What the fake server saw of the chunk requests: which overlaps were two senders.

The fake counts a chunk request that enters its upload handler while another one for the
same video is inside it (``overlapping_chunks``). That count also takes in a request
whose sender had given up on it before the other began: the fake's slow answers wait
3 s before the handler, longer than the client's 2 s ``valt.timeout``, and a request
that a node cut short at its claim's end, or a killed node's last one, can still be
read from the socket afterwards. Neither is a node sending: this log tells them apart.
For every chunk request it keeps when it entered and left the handler, its byte range,
which login session sent it (a number, never the token) and which process logged in
for that session, and, when it met another request for the same video inside, whether
that one's sender was still connected. Two requests of one process are one node's
(its request given up on, beside the one it sent again), never two nodes'.
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

import psutil

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
    pid: int | None
    """The process that logged in for the session (None: not found)."""
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
        self._pids: dict[str, int | None] = {}  # token -> the process that logged in for it
        self.names: dict[int, str] = {}
        """Process id -> the node's name (the campaign fills it at every start)."""
        self._inside: dict[tuple[str, str], dict[int, Any]] = {}  # video -> number -> request

    def install(self, server: FakeValtThread) -> None:
        def wire(fake: Any) -> None:
            state = fake.state
            counted = state.chunk_in_flight

            def logged(record_id: str, video_id: str) -> Any:
                # The handler's own frame holds the request (the fake passes only ids).
                request = sys._getframe(1).f_locals.get("request")
                return self._watch(counted(record_id, video_id), record_id, video_id, request)

            accounts = state.accounts
            log_in = accounts.login

            def logging_in(username: object, password: object) -> str | None:
                token: str | None = log_in(username, password)
                request = sys._getframe(1).f_locals.get("request")
                if token is not None:
                    self._pids[token] = _client_pid(request)
                return token

            setattr(state, "chunk_in_flight", logged)  # noqa: B010 - patching the instance
            setattr(accounts, "login", logging_in)  # noqa: B010

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
            self._pids.get(token),
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
        """Each pair of chunk requests for one video inside the handler at once: those of
        two processes whose senders were both connected (two nodes sending), and the
        others (one given up on by its sender, or both of one node)."""
        nodes: list[str] = []
        others: list[str] = []
        for later in self.seen:
            for number, live in later.met:
                earlier = self.seen[number]
                pair = f"record {later.record_id}: {self.describe(earlier)} / "
                pair += self.describe(later)
                one_node = earlier.pid is not None and earlier.pid == later.pid
                both = live and not later.client_gone and not one_node
                (nodes if both else others).append(pair)
        return nodes, others

    def describe(self, seen: ChunkSeen) -> str:
        """``node a (session 3) bytes 0-99/200 in 12:00:01.250-12:00:03.100`` (UTC, as the
        daemons log)."""
        ended = clock(seen.ended) if seen.ended is not None else "(still in)"
        gone = ", its sender gone" if seen.client_gone else ""
        who = self.names.get(seen.pid or 0, f"pid {seen.pid}" if seen.pid else "unknown")
        return (
            f"node {who} (session {seen.session}) {seen.range} in {clock(seen.began)}-{ended}{gone}"
        )

    def write(self, path: Path) -> None:
        """Every request as a JSON line (times as the daemons log them)."""
        with open(path, "w") as out:
            for number, seen in enumerate(list(self.seen)):
                fields = dataclasses.asdict(seen)
                fields["number"] = number
                fields["began"] = clock(seen.began)
                fields["ended"] = clock(seen.ended) if seen.ended is not None else None
                out.write(json.dumps(fields) + "\n")


def _client_pid(request: Any) -> int | None:
    """The local process on the other end of the request's connection (None: not found,
    or not on this machine)."""
    transport = getattr(request, "transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return None
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and tuple(conn.laddr)[:2] == tuple(peer)[:2] and conn.pid:
            return int(conn.pid)
    return None


def _gone(request: Any) -> bool:
    transport = getattr(request, "transport", None)
    return transport is None or bool(transport.is_closing())


def clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S.%f")[:-3]
