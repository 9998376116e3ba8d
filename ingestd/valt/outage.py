"""A server outage: since when, why, and when the next probe may go.

The Valt client declares an outage when a request fails for want of a server
and a probe fails too (:mod:`ingestd.valt.rules` says which failures and
answers mean that). From then on every call raises
:class:`~ingestd.errors.ServerUnreachable` without touching the network, and
only :meth:`Outage.watch` sends anything: one probe at a time, with a pause that
doubles up to a cap, until the server answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ingestd.aio import wait_any
from ingestd.errors import Redirected, RetryableError, ServerUnreachable
from ingestd.logs import get_logger
from ingestd.units import iso_time
from ingestd.valt import rules as valt_rules
from ingestd.valt.wire import Answer

log = get_logger("ingestd.valt.outage")

# When no outage is on, how often watch() looks (it is woken when one begins).
IDLE_LOOK = 5.0


class Outage:
    """Whether the server is down now, as the last request and probe showed."""

    def __init__(
        self, probe: Callable[[], Awaitable[bool]], *, retry: tuple[float, float] | None
    ) -> None:
        self._probe = probe  # one cheap request: True when the server answers
        self._lock = asyncio.Lock()  # one probe at a time; the others learn its verdict
        # The pause before the first probe and its cap; None: never declared (a one-shot
        # command reports each failure as it is).
        self.enabled = retry is not None
        self.retry_first, self.retry_max = retry or (0.0, 0.0)
        self._delay = self.retry_first
        self.since: float | None = None  # wall time the outage began; None: the server answers
        self.detail = ""  # the request failure that began it (scrubbed by IngestdError)
        self.probes = 0  # probes that failed since it began
        self._next_probe = 0.0  # monotonic
        self.changed = asyncio.Event()  # set when an outage begins (wakes watch())
        self.on_end: Callable[[], None] = lambda: None  # the daemon: start work again

    @property
    def down(self) -> bool:
        return self.since is not None

    def describe(self) -> str:
        """One stable sentence for health, ``status`` and the alert (no countdown in it, so
        the ledger's copy is written once per outage)."""
        if self.since is None:
            return ""
        return (
            f"the Valt server is unreachable since {iso_time(self.since)} ({self.detail}); "
            "uploads wait and no attempt counts until it answers again"
        )

    def probe_in(self) -> float:
        """Seconds until the next probe may go (0: now)."""
        return max(0.0, self._next_probe - time.monotonic())

    def begin(self, failure: RetryableError) -> None:
        """A request failed and so did the probe after it: the server is down."""
        if self.since is None:
            self.since = time.time()
            self.detail = str(failure)
            self.probes = 0
            self._delay = self.retry_first
            self._next_probe = time.monotonic() + self._delay
            self.changed.set()

    def probe_failed(self) -> float:
        """The server is still down: the next probe waits twice as long (capped)."""
        self.probes += 1
        self._delay = min(self.retry_max, self._delay * 2)
        self._next_probe = time.monotonic() + self._delay
        return self._delay

    def end(self) -> float:
        """The server answers again; returns how long it was down (s)."""
        lasted = 0.0 if self.since is None else time.time() - self.since
        self.since = None
        self.detail = ""
        return lasted

    async def suspect(self, failure: RetryableError) -> None:
        """A request failed. If for want of a server and a probe fails too, the server is
        down: raise ServerUnreachable. Else the failure was about that request alone, and
        the caller raises it (it counts toward that file's attempts)."""
        if not self.enabled or not valt_rules.means_server_down(failure.status, failure.reason):
            return
        async with self._lock:
            if not self.down:
                if await self._probe():
                    return
                self.begin(failure)
                log.error(
                    "server.unreachable", error=str(failure), next_probe_s=round(self.probe_in(), 1)
                )
        raise self.error("", failure) from None

    async def probe_once(self) -> bool:
        """During an outage, probe once: end it if the server answers, else wait longer."""
        async with self._lock:
            if not self.down:
                return True
            if await self._probe():
                log.info("server.reachable", down_s=round(self.end(), 1))
                self.on_end()
                return True
            log.info("server.still_unreachable", next_probe_s=round(self.probe_failed(), 1))
            return False

    async def watch(self, stop: asyncio.Event) -> None:
        """Probe while the server is down, one probe at a time, until ``stop`` (a task
        of the daemon's: nothing else sends a request during an outage)."""
        while not stop.is_set():
            self.changed.clear()
            if self.down and self.probe_in() <= 0:
                await self.probe_once()
                continue
            await wait_any(stop, self.changed, self.probe_in() if self.down else IDLE_LOOK)

    def error(self, what: str, failure: RetryableError | None = None) -> ServerUnreachable:
        """What a call made during the outage raises (the request's own failure, if any)."""
        words = str(failure) if failure is not None else f"{what}: not sent"
        return ServerUnreachable(
            f"{words}; the Valt server is unreachable since {iso_time(self.since or time.time())}",
            status=None if failure is None else failure.status,
            reason="server_unreachable" if failure is None else failure.reason,
        )


Exchange = Callable[..., Awaitable[Answer]]


async def probe(exchange: Exchange, token: str | None) -> bool:
    """The client's probe over its ``_exchange``: True when the server answers
    (rules.probe_says_up). A 401 is an answer, never a reason to log in."""
    try:
        answer = await exchange("GET", valt_rules.PROBE_PATH, valt_rules.PROBE_CALL, token=token)
    except Redirected:
        return True  # it answered; the redirect pauses server work on its own
    except RetryableError:
        return False
    return valt_rules.probe_says_up(answer.status)
