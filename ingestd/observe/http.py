"""The status port's HTTP server: a connection cap, deadlines, and the optional token.

An open port is an invitation (issue 11, finding 7): 200 idle connections under a
128-descriptor limit once left the daemon unable to open its own files, and asyncio
logged an accept traceback thousands of times a second. So this server holds

- at most :func:`connection_cap` connections, a small share of RLIMIT_NOFILE. When
  full, the connection that has waited longest without sending a whole request
  makes room (an idle one is worth nothing, and a real scraper sends at once);
  when every one is busy in a handler, the newcomer is closed;
- a deadline for each wait: a request head must arrive (and the previous answer be
  taken) within ``HEADER_TIMEOUT``, and a handler may run for ``HANDLER_TIMEOUT``;
- a listen backlog of twice the cap, since asyncio accepts that many sockets in one
  go, before the cap can act: at most 3/8 of the descriptors are ever the port's;
- the accept error (out of descriptors) logged at most once a minute, with a count;
- with a token (``status.token_file``), every path answers 401 without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ingestd.errors import IngestdError
from ingestd.logs import get_logger

log = get_logger("ingestd.observe.http")

HEADER_TIMEOUT = 10.0
HANDLER_TIMEOUT = 30.0
KEEPALIVE_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
ACCEPT_LOG_EVERY = 60.0
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def connection_cap(soft_limit: int | None = None) -> int:
    """How many status connections to hold: an eighth of RLIMIT_NOFILE, 4 to 64.

    The rest of the descriptors stay for the ledger, the watch folders, the video
    being read and the connections to Valt.
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit < 0:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft_limit // 8))


class _Connection(asyncio.Protocol):
    """One accepted socket: aiohttp's protocol inside, the gate's deadline around it."""

    def __init__(self, gate: _Gate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.since = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inner.connection_made(transport)
        self.gate.admit(self)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.gate.forget(self)
        self.inner.connection_lost(exc)

    def wait_for(self, seconds: float) -> None:
        """Close the connection unless the next step comes within ``seconds``."""
        self._cancel_deadline()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self.close)

    def close(self) -> None:
        self._cancel_deadline()
        if self.transport is not None and not self.transport.is_closing():
            # abort, not close: a client that reads nothing must not hold the socket.
            self.transport.abort()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class _Gate:
    """The connections held, oldest first, and the rule that bounds them."""

    def __init__(self, cap: int, header_timeout: float, handler_timeout: float) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.handler_timeout = handler_timeout
        self.open: dict[_Connection, None] = {}  # insertion order: oldest first
        self._by_inner: dict[object, _Connection] = {}

    def admit(self, connection: _Connection) -> None:
        if len(self.open) >= self.cap:
            idle = next((held for held in self.open if not held.busy), None)
            if idle is None:
                connection.close()  # every held one is being answered: the newcomer waits
                return
            idle.close()
            self.forget(idle)
        self.open[connection] = None
        self._by_inner[connection.inner] = connection
        connection.wait_for(self.header_timeout)

    def forget(self, connection: _Connection) -> None:
        self.open.pop(connection, None)
        self._by_inner.pop(connection.inner, None)

    def request_started(self, protocol: object) -> None:
        connection = self._by_inner.get(protocol)
        if connection is not None:
            connection.busy = True
            connection.wait_for(self.handler_timeout)

    def request_ended(self, protocol: object) -> None:
        """The handler is done; the answer must be taken, and any next head come, in time."""
        connection = self._by_inner.get(protocol)
        if connection is not None:
            connection.busy = False
            self.open.pop(connection, None)
            self.open[connection] = None  # it now counts as the newest idle one
            connection.wait_for(self.header_timeout)

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close()
        self.open.clear()
        self._by_inner.clear()


# --- the token ------------------------------------------------------------------------------


def _presented_token(header: str) -> str | None:
    """The token in ``Authorization: Bearer T`` or ``Basic base64(ANY:T)``; None otherwise."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def token_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token``; compared in constant time."""
    presented = _presented_token(header) if header else None
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))


def _refusal() -> web.Response:
    return web.Response(
        status=401,
        text="401: this status port needs its token (status.token_file)\n",
        headers={"WWW-Authenticate": 'Basic realm="ingestd", charset="UTF-8"'},
    )


def _guard(gate: _Gate, token: str | None) -> Any:
    """The middleware: tells the gate a request is in hand, and asks for the token."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        gate.request_started(request.protocol)
        try:
            if token is not None and not token_matches(request.headers.get("Authorization"), token):
                return _refusal()
            return await handler(request)
        finally:
            gate.request_ended(request.protocol)

    return guard


# --- the accept error -----------------------------------------------------------------------


class _AcceptErrorLog:
    """asyncio's accept error, once a minute with a count (it repeats for every try)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self.last: float | None = None
        self.suppressed = 0
        self.seen = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.seen += 1
        now = time.monotonic()
        if self.last is not None and now - self.last < ACCEPT_LOG_EVERY:
            self.suppressed += 1
            return
        exc = context.get("exception")
        log.error(
            "status.accept_failed",
            error=getattr(exc, "strerror", None) or str(exc),
            repeats_since_last=self.suppressed,
            detail="the process is out of file descriptors; see LimitNOFILE",
        )
        self.last, self.suppressed = now, 0

    def restore(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)


# --- the server -----------------------------------------------------------------------------


class StatusServer:
    """The listening status port; ``close()`` stops it and drops every connection."""

    def __init__(
        self,
        runner: web.AppRunner,
        server: asyncio.Server,
        gate: _Gate,
        accept_log: _AcceptErrorLog,
    ) -> None:
        self._runner = runner
        self._server = server
        self._gate = gate
        self._accept_log = accept_log

    def accept_errors(self) -> int:
        """How many accepts failed for want of a descriptor since the start."""
        return self._accept_log.seen

    async def close(self) -> None:
        self._server.close()
        self._gate.close_all()
        await self._server.wait_closed()
        await self._runner.cleanup()
        self._accept_log.restore()


async def start_status_server(
    routes: Callable[[web.Application], None],
    host: str,
    port: int,
    *,
    token: str | None,
    cap: int | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    handler_timeout: float = HANDLER_TIMEOUT,
) -> StatusServer:
    """Serve the routes ``routes`` adds on exactly ``host:port``.

    A port in use is a clear, typed error (exit 1). ``cap`` defaults to
    :func:`connection_cap`.
    """
    gate = _Gate(connection_cap() if cap is None else cap, header_timeout, handler_timeout)
    app = web.Application(middlewares=[_guard(gate, token)])
    routes(app)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        lingering_time=0,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    handler_factory = runner.server
    assert handler_factory is not None
    try:
        server = await loop.create_server(
            lambda: _Connection(gate, handler_factory()),
            host,
            port,
            # asyncio accepts up to ``backlog`` sockets in one go, before the gate sees one.
            backlog=2 * gate.cap,
            reuse_address=True,
        )
    except OSError as exc:
        await runner.cleanup()
        why = exc.strerror or str(exc)
        raise IngestdError(
            f"status.listen: cannot listen on {host}:{port}: {why} "
            "(another ingestd? choose a free port, or null to switch /healthz and /metrics off)"
        ) from None
    accept_log = _AcceptErrorLog(loop)
    loop.set_exception_handler(accept_log)
    log.info(
        "status.listening",
        host=host,
        port=port,
        endpoints=["/", "/status.json", "/healthz", "/metrics"],
        token=token is not None,
        max_connections=gate.cap,
    )
    return StatusServer(runner, server, gate, accept_log)
