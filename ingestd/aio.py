"""Small asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio


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
