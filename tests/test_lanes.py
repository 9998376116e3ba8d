"""A task's own thread for its blocking calls (``aio.Lane``): what an upload worker's looks at
its files go through."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ingestd.aio import blocking, own_lane


async def test_a_task_with_its_own_lane_runs_its_calls_on_that_thread_in_order() -> None:
    async def names() -> list[str]:
        with own_lane("lane-test"):
            return [await blocking(lambda: threading.current_thread().name) for _ in range(3)]

    assert await asyncio.create_task(names()) == ["lane-test"] * 3
    # Without a lane of its own, a task's calls go to asyncio's default threads.
    elsewhere = await blocking(lambda: threading.current_thread().name)
    assert elsewhere != "lane-test" and elsewhere != threading.current_thread().name


async def test_a_call_that_fails_raises_in_the_caller_and_the_lane_goes_on() -> None:
    def fails(text: str, *, suffix: str) -> str:
        raise PermissionError(text + suffix)

    with own_lane("lane-test"):
        with pytest.raises(PermissionError, match="no entry!"):
            await blocking(fails, "no entry", suffix="!")
        assert await blocking(sum, [1, 2, 3]) == 6


async def test_a_call_that_hangs_holds_up_its_own_task_alone() -> None:
    release = threading.Event()

    async def stuck() -> None:
        with own_lane("stuck"):
            await blocking(release.wait, 30)

    async def free() -> int:
        with own_lane("free"):
            return await blocking(len, "four")

    hanging = asyncio.create_task(stuck())
    try:
        assert await asyncio.wait_for(asyncio.create_task(free()), 5) == 4
        assert not hanging.done()
    finally:
        release.set()
        await hanging


async def test_a_caller_cancelled_mid_call_leaves_the_lane_usable() -> None:
    release = threading.Event()
    with own_lane("lane-test"):
        call = asyncio.ensure_future(blocking(release.wait, 30))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()  # the call ends in its thread; its answer is dropped
        assert await blocking(str.upper, "next") == "NEXT"
