"""``upload.bandwidth_limit``: one token bucket shared by every upload worker of a daemon.

The rate comes from :meth:`BandwidthLimit.rate_at` at local wall time and is
looked up again at least every :data:`RECHECK` seconds, so a schedule
boundary (``{"08:00-18:00": 10MB, default: null}``) takes effect within a
second, also across midnight. ``None`` means unlimited: :meth:`Pacer.take`
then returns at once, without waiting or suspending.

The bucket runs on "debt": a piece may go when the bucket is not in debt, and
takes its bytes even if that leaves the bucket below zero; the next piece
waits until the debt is paid. The long-run rate is exactly the limit whatever
the piece size, and the bucket holds at most :data:`BURST` seconds of credit,
so a pause is not followed by a burst. Waiters queue on one lock, in order,
so workers share the limit evenly. Pieces are kept to :data:`PIECE_SECONDS`
of the rate, so that at a low limit every request still moves often enough
for the stall guard (``valt.timeout``) and the server's own body timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable

from ingestd.config.schema import BandwidthLimit
from ingestd.logs import get_logger

log = get_logger("ingestd.upload.pacing")

RECHECK = 0.5
"""Seconds between two lookups of the schedule (a boundary takes effect within this)."""
BURST = 0.1
"""Seconds of credit the bucket holds after a pause."""
PIECE_SECONDS = 0.1
"""A piece carries at most this many seconds' worth of the rate..."""
MIN_PIECE = 4096
"""...but at least this many bytes."""

Clock = Callable[[], float]
WallClock = Callable[[], datetime.datetime]
Sleep = Callable[[float], Awaitable[None]]


class Pacer:
    """Paces the bytes of all uploads to ``limit`` (see the module docstring).

    ``clock`` (monotonic seconds), ``wall`` (local time, for the schedule) and
    ``sleep`` can be replaced, so tests run on a virtual clock.
    """

    def __init__(
        self,
        limit: BandwidthLimit,
        *,
        clock: Clock = time.monotonic,
        wall: WallClock = datetime.datetime.now,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._rate: int | None = None
        self._checked_at: float | None = None
        self._tokens = 0.0
        self._stamp = clock()

    @classmethod
    def for_limit(cls, limit: BandwidthLimit | None) -> Pacer | None:
        """A pacer for ``upload.bandwidth_limit``; None when there is no limit at all."""
        return None if limit is None else cls(limit)

    @property
    def rate(self) -> int | None:
        """The limit in bytes/s now (None: unlimited), looked up at most every RECHECK s."""
        now = self._clock()
        if self._checked_at is None or now - self._checked_at >= RECHECK:
            self._checked_at = now
            rate = self.limit.rate_at(self._wall())
            self._switch(rate, now)
        return self._rate

    def _switch(self, rate: int | None, now: float) -> None:
        if rate == self._rate:
            return
        self._refill(now)
        if rate is None:
            self._tokens = 0.0  # debt is forgiven; credit is not kept for a later limit
        else:
            self._tokens = min(self._tokens, rate * BURST)
        log.info("upload.bandwidth_limit", bytes_per_s=rate, previous=self._rate)
        self._rate = rate

    def _refill(self, now: float) -> None:
        if self._rate is not None:
            self._tokens = min(self._rate * BURST, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def piece_size(self, wanted: int) -> int:
        """How many bytes the next piece may have (``wanted``, or less at a low limit)."""
        rate = self.rate
        if rate is None:
            return wanted
        return max(1, min(wanted, max(MIN_PIECE, int(rate * PIECE_SECONDS))))

    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes may be sent, then count them as sent."""
        if self.rate is None:
            return
        async with self._lock:
            while True:
                rate = self.rate
                if rate is None:
                    return
                now = self._clock()
                self._refill(now)
                if self._tokens > -1.0:  # out of debt (to within a byte of rounding)
                    self._tokens -= size
                    return
                await self._sleep(min(-self._tokens / rate, RECHECK))
