"""One HTTP exchange's parts outside the client: the answer, the stall guard, errors.

Nothing here sees a token or password. The server's words reach a message
only through :func:`ingestd.valt.rules.status_message`, which bounds and
scrubs them, and a redirect's ``Location`` only as scheme, host and port.
"""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from ingestd.errors import BodyTooLarge, PermanentError, RetryableError
from ingestd.valt import rules as valt_rules

__all__ = [
    "Answer",
    "StallGuard",
    "dig",
    "guarded",
    "parse_answer",
    "phrase",
    "raise_for",
    "redirect_target",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """A server answer: status, parsed JSON (None if not JSON) and text."""

    status: int
    body: Any
    text: str
    date: str | None = None


async def guarded(
    pieces: AsyncIterator[bytes | memoryview], guard: StallGuard
) -> AsyncIterator[bytes | memoryview]:
    """``pieces``, moving ``guard``'s deadline with each one sent."""
    async for piece in pieces:
        guard.progress()
        yield piece
    guard.progress()


def parse_answer(status: int, raw: bytes, date: str | None) -> Answer:
    """An answer's bytes as text, and as JSON when they look like it."""
    text = raw.decode("utf-8", "replace")
    body: Any = None
    if text.strip()[:1] in ("{", "["):
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    return Answer(status=status, body=body, text=text, date=date)


def dig(body: object, *keys: str) -> Any:
    """``body[keys[0]][keys[1]]...``, or None where the answer is not shaped so."""
    for key in keys:
        if not isinstance(body, Mapping):
            return None
        body = body.get(key)
    return body


class StallGuard:
    """Cancels a request when its body stops moving for ``idle`` seconds.

    aiohttp's ``sock_read`` covers waiting for the answer, but nothing covers a
    server that stops reading our body; a total timeout would cut off a large
    upload on a slow link, so the deadline follows the body. A piece sent only
    notes the time; one timer per ``idle`` seconds looks at it (moving the
    timeout's deadline for every piece cost a timer handle each: ~2% of the
    CPU of an upload at loopback rates).
    """

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._timeout: asyncio.Timeout | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self, timeout: asyncio.Timeout) -> None:
        """Guard the body from now on; ``timeout`` (entered, without a deadline) expires
        once the body has not moved for ``idle`` seconds."""
        self._timeout, self._loop = timeout, asyncio.get_running_loop()
        self.progress()

    def progress(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._last = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._last + self.idle, self._look)

    def _look(self) -> None:
        self._timer = None
        loop, timeout = self._loop, self._timeout
        if loop is None or timeout is None:
            return
        due = self._last + self.idle
        if loop.time() >= due:
            timeout.reschedule(loop.time())  # expires now: the request ends in TimeoutError
        else:
            self._timer = loop.call_at(due, self._look)

    def body_done(self) -> None:
        """The body is sent (or the request is over): stop guarding it."""
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def raise_for(answer: Answer, what: str, *, quote: bool = True) -> None:
    """Turn a non-2xx answer into the right exception.

    ``quote=False`` leaves the server's words out (``login``: its answer may
    quote the password, which is too short to be scrubbed if under 4 characters).
    """
    if 200 <= answer.status < 300:
        return
    if quote:
        words = valt_rules.status_message(answer.status, answer.body, answer.text)
    else:
        words = (
            f"{answer.status} {phrase(answer.status)} "
            "(the server's words are not shown: they may quote the credentials)"
        )
    message = f"{what}: {words}"
    if answer.status == 413:
        raise BodyTooLarge(message, status=413, reason="too_large")
    if valt_rules.is_retryable_status(answer.status):
        raise RetryableError(message, status=answer.status)
    raise PermanentError(message, status=answer.status)


def phrase(status: int) -> str:
    """The standard reason phrase of a status (ours, not the server's words)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


def redirect_target(url: str, location: str | None) -> str:
    """Where a redirect points: scheme, host and port only (never a path's query string,
    nor user:password@), bounded, since the ``Location`` is the server's text."""
    if not location:
        return "an address it does not give (no Location header)"
    try:
        parts = urlsplit(urljoin(url, location.strip()))
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an address that is not a URL"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme or '?'}://{host}{port}"[:120]
