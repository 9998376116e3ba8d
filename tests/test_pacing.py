"""upload.bandwidth_limit: the shared token bucket (virtual clock) and one real daemon run."""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path

import pytest
from conftest import random_file, start_daemon, stop_process, wait_for, write_config

from ingestd.config.schema import BandwidthLimit, BandwidthWindow
from ingestd.fake_valt import FakeValtThread
from ingestd.upload import pacing
from ingestd.upload.pacing import Pacer

KB = 1000
MB = 1000 * 1000


class Clocks:
    """A monotonic clock, a wall clock and a sleep that advance together (no real waiting)."""

    def __init__(self, wall: datetime.datetime) -> None:
        self.now = 1000.0
        self.start_wall = wall
        self.start = self.now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime.datetime:
        return self.start_wall + datetime.timedelta(seconds=self.now - self.start)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def pacer(self, limit: BandwidthLimit) -> Pacer:
        return Pacer(limit, clock=self.monotonic, wall=self.wall, sleep=self.sleep)


def at(hour: int, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 3, 2, hour, minute, second, microsecond)


def window(start: str, end: str, rate: int | None) -> BandwidthWindow:
    return BandwidthWindow(
        datetime.time.fromisoformat(start), datetime.time.fromisoformat(end), rate
    )


async def test_no_limit_never_waits() -> None:
    clocks = Clocks(at(12))
    pacer = clocks.pacer(BandwidthLimit(default=None, windows=(window("08:00", "09:00", KB),)))
    for _ in range(1000):
        await pacer.take(1024 * 1024)
    assert clocks.sleeps == []
    assert pacer.piece_size(1024 * 1024) == 1024 * 1024


def test_no_limit_at_all_is_no_pacer() -> None:
    assert Pacer.for_limit(None) is None
    assert isinstance(Pacer.for_limit(BandwidthLimit(default=20 * MB)), Pacer)


async def test_a_constant_limit_holds_over_time() -> None:
    clocks = Clocks(at(12))
    pacer = clocks.pacer(BandwidthLimit(default=100 * KB))
    sent = 0
    while clocks.now - clocks.start < 30:
        size = pacer.piece_size(64 * 1024)
        await pacer.take(size)
        sent += size
    rate = sent / (clocks.now - clocks.start)
    assert rate == pytest.approx(100 * KB, rel=0.02)


async def test_pieces_shrink_at_a_low_limit() -> None:
    clocks = Clocks(at(12))
    assert clocks.pacer(BandwidthLimit(default=100 * KB)).piece_size(1024 * 1024) == 10 * KB
    assert clocks.pacer(BandwidthLimit(default=1)).piece_size(1024 * 1024) == pacing.MIN_PIECE
    assert clocks.pacer(BandwidthLimit(default=100 * MB)).piece_size(1024 * 1024) == 1024 * 1024
    assert clocks.pacer(BandwidthLimit(default=1)).piece_size(100) == 100


async def test_workers_share_one_limit_evenly() -> None:
    clocks = Clocks(at(12))
    pacer = clocks.pacer(BandwidthLimit(default=300 * KB))
    sent = [0, 0, 0]

    async def worker(number: int) -> None:
        while clocks.now - clocks.start < 20:
            await pacer.take(30 * KB)
            sent[number] += 30 * KB

    await asyncio.gather(*(worker(n) for n in range(3)))
    assert sum(sent) / (clocks.now - clocks.start) == pytest.approx(300 * KB, rel=0.03)
    assert max(sent) - min(sent) <= 2 * 30 * KB  # in turn, one piece each


async def test_a_pause_earns_no_burst() -> None:
    clocks = Clocks(at(12))
    pacer = clocks.pacer(BandwidthLimit(default=100 * KB))
    await pacer.take(10 * KB)
    clocks.now += 60  # nothing sent for a minute
    started, sent = clocks.now, 0
    for _ in range(30):
        await pacer.take(10 * KB)
        sent += 10 * KB
    # At most BURST seconds of credit beyond the rate (plus the first piece, sent at once).
    allowed = 100 * KB * (clocks.now - started + pacing.BURST) + 10 * KB
    assert sent <= allowed + 1  # float rounding


async def test_a_schedule_boundary_takes_effect_within_a_second() -> None:
    # 10 s before 18:00 the window's 50 KB/s applies; after it, no limit.
    clocks = Clocks(at(17, 59, 50))
    limit = BandwidthLimit(default=None, windows=(window("08:00", "18:00", 50 * KB),))
    pacer = clocks.pacer(limit)
    boundary = clocks.now + 10
    sent_before = 0
    while clocks.now < boundary:
        size = pacer.piece_size(1024 * 1024)
        await pacer.take(size)
        sent_before += size
    assert sent_before / 10 == pytest.approx(50 * KB, rel=0.05)
    # Past the boundary the waits stop within RECHECK; then nothing waits at all.
    while pacer.rate is not None:
        await pacer.take(pacer.piece_size(1024 * 1024))
    assert clocks.now - boundary <= pacing.RECHECK + 0.1
    waited = len(clocks.sleeps)
    for _ in range(100):
        await pacer.take(pacer.piece_size(1024 * 1024))
    assert len(clocks.sleeps) == waited
    assert pacer.piece_size(1024 * 1024) == 1024 * 1024


async def test_a_waiter_is_released_when_the_limit_is_lifted() -> None:
    # 1 B/s, one piece in debt: the next piece would wait for hours, but the window
    # ends in 2 s and the limit is lifted: it goes within RECHECK of the boundary.
    clocks = Clocks(at(5, 59, 58))
    pacer = clocks.pacer(BandwidthLimit(default=None, windows=(window("22:00", "06:00", 1),)))
    await pacer.take(pacing.MIN_PIECE)
    await pacer.take(pacing.MIN_PIECE)
    assert 2.0 <= clocks.now - clocks.start <= 2.0 + pacing.RECHECK + 1e-9


async def test_a_window_across_midnight_applies_on_both_sides() -> None:
    limit = BandwidthLimit(default=10 * MB, windows=(window("22:00", "06:00", 100 * KB),))
    for moment, expected in [
        (at(21, 59, 59), 10 * MB),
        (at(22), 100 * KB),
        (at(23, 59, 59, 999999), 100 * KB),
        (at(0), 100 * KB),
        (at(5, 59, 59), 100 * KB),
        (at(6), 10 * MB),
    ]:
        assert Clocks(moment).pacer(limit).rate == expected, moment


async def test_the_rate_follows_the_clock_across_midnight() -> None:
    # Starting at 21:59:59 under the 10 MB/s default, into the night window at 22:00.
    clocks = Clocks(at(21, 59, 59))
    limit = BandwidthLimit(default=10 * MB, windows=(window("22:00", "06:00", 100 * KB),))
    pacer = clocks.pacer(limit)
    assert pacer.rate == 10 * MB
    clocks.now += 1.0
    assert pacer.rate == 100 * KB
    # ...and on through midnight the next day's early hours stay limited.
    clocks.now += 2 * 3600.0
    assert clocks.wall().time() < datetime.time(1, 0)
    assert pacer.rate == 100 * KB


async def test_the_rate_is_looked_up_at_most_every_recheck() -> None:
    clocks = Clocks(at(12))
    calls: list[datetime.datetime] = []

    class Counting(BandwidthLimit):
        def rate_at(self, now: datetime.datetime) -> int | None:
            calls.append(now)
            return super().rate_at(now)

    pacer = clocks.pacer(Counting(default=MB))
    for _ in range(100):
        await pacer.take(1000)
    seconds = clocks.now - clocks.start
    assert len(calls) <= seconds / pacing.RECHECK + 2


@pytest.mark.slow
def test_a_real_upload_keeps_to_the_limit_with_two_workers(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """2 MB/s shared by 2 workers, measured at the fake server over about 3 s."""
    for name in ("a", "b"):
        random_file(export / f"{name}.mp4", 8 * MB, seed=ord(name))
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 2, "chunk_size": "1MiB", "bandwidth_limit": "2MB"},
        watch={"settle": "0.1s"},
    )

    def received() -> dict[str, int]:
        return {r["name"]: int(r["videos"][0]["received"]) for r in server.snapshot()["records"]}

    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: sum(received().values()) > 0, timeout=60)
        time.sleep(0.5)  # past the first pieces
        before, started = received(), time.monotonic()
        time.sleep(3.0)
        after, ended = received(), time.monotonic()
    finally:
        stop_process(daemon)
    moved = {name: after[name] - before.get(name, 0) for name in after}
    rate = sum(moved.values()) / (ended - started)
    # The tolerance is about correctness (a pacer that does nothing runs at hundreds of
    # MB/s here), not about this machine's speed.
    assert 1.5 * MB <= rate <= 2.4 * MB, (rate, moved)
    assert set(moved) == {"a", "b"} and min(moved.values()) > 0.25 * MB, moved  # both workers
