"""Small asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it was set.

    Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives
    just as the inner wait completes, which leaves a loop running after its
    TaskGroup has been cancelled; ``asyncio.timeout`` does not.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def wait_any(
    stop: asyncio.Event,
    wake: asyncio.Event,
    timeout: float | None,
    tasks: Iterable[asyncio.Task[Any]] = (),
) -> None:
    """Sleep until ``stop`` or ``wake`` is set, ``timeout`` passes (None: never), or one
    of ``tasks`` ends (they are left running)."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait([*waiters, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Lane:
    """A thread of one task's own for its blocking calls (looks at files, opens).

    A call is a queue put to the thread and one ``call_soon_threadsafe`` back: about
    half the CPU of ``asyncio.to_thread`` (which copies the context, goes through the
    default executor and chains two futures), and an upload worker makes several a
    file (bench case 4). One thread per task keeps what ``to_thread`` gave: a call that
    hangs (a share that stopped answering) holds up that task alone.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None]
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # the caller's to raise
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                future.get_loop().call_soon_threadsafe(_settle, future, *outcome)

    async def run(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.put((future, functools.partial(function, *args, **kwargs)))
        return await future

    def close(self) -> None:
        """The thread ends after the calls already given to it."""
        self._calls.put(None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_LANE: contextvars.ContextVar[Lane | None] = contextvars.ContextVar("ingestd_lane", default=None)


async def blocking(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` in a thread: the current task's :class:`Lane` when it
    has one (:func:`own_lane`), else ``asyncio.to_thread``."""
    lane = _LANE.get()
    if lane is None:
        return await asyncio.to_thread(function, *args, **kwargs)
    return await lane.run(function, *args, **kwargs)


@contextlib.contextmanager
def own_lane(name: str) -> Iterator[Lane]:
    """The current task's :func:`blocking` calls go to a new :class:`Lane` meanwhile."""
    lane = Lane(name)
    token = _LANE.set(lane)
    try:
        yield lane
    finally:
        _LANE.reset(token)
        lane.close()
