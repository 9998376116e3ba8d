"""The layers every ``/api/v3`` request passes, outermost first.

1. :func:`answer_and_record` - turns stray exceptions into Valt error bodies,
   reads and discards whatever body is left before answering (so a client
   still sending sees the answer, not a reset), logs the request, and with
   ``quote_url`` puts the full request URL into every error answer.
2. :func:`redirect` - ``redirect_to``: a 307 for every call.
3. :func:`limit_body` - nginx's ``client_max_body_size`` (413, HTML).
4. :func:`inject_faults` - slow, hung, dropped, failed, broken answers.
5. :func:`require_token` - ``?access_token=``, counted against ``token_ttl``.

Only ``/api/v3/`` passes them: the ``/_fake`` control calls must never be
faulted, need no token and are not counted.
"""

from __future__ import annotations

import contextlib
import logging

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from ingestd.fake_valt import bodies
from ingestd.fake_valt.api import INVALID_PAYLOAD, InvalidPayload
from ingestd.fake_valt.auth import TokenCheck
from ingestd.fake_valt.context import STATE_KEY, LoggedRequest, ServerState

logger = logging.getLogger("ingestd.fake_valt")

API_PREFIX = "/api/v3/"
LOGIN_PATH = "/api/v3/login"
UPLOAD_ROUTE = "/api/v3/records/{record_id}/videos/{video_id}"
BREAKABLE_ROUTES = {
    (hdrs.METH_POST, "/api/v3/records/create-upload"),
    (hdrs.METH_GET, "/api/v3/records/{record_id}"),
}
"""Calls a broken proxy answers with ``200 OK`` text (``not_json_rate``)."""

DROP_READ_LIMIT = 1024 * 1024
"""A dropped upload reads at most this much (half its body, if smaller) first."""


def _is_api(request: web.Request) -> bool:
    return request.path.startswith(API_PREFIX)


def route_pattern(request: web.Request) -> str:
    """The route a request matched, e.g. ``/api/v3/records/{record_id}``; else its path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


async def _discard_body(request: web.Request) -> bool:
    """Read what is left of the body; False if the client went away meanwhile."""
    try:
        while await request.content.readany():
            pass
    except ConnectionError:
        return False
    return True


def _abort(request: web.Request) -> bodies.NoAnswer:
    """Cut the connection without an answer, like a crashed backend or a lost link."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return bodies.NoAnswer()


@web.middleware
async def answer_and_record(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Normalise every answer to Valt's shapes, drain the body, log the request."""
    if not _is_api(request):
        return await handler(request)
    quoting = request.app[STATE_KEY].faults.quote_url
    # Read (and kept by aiohttp) before a fault can answer without reading it.
    login_body = await request.read() if quoting and request.path == LOGIN_PATH else b""
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # the router's 404 and 405
        if exc.status < 400:
            raise
        response = bodies.error(exc.status, exc.reason)
    except InvalidPayload:
        response = bodies.error(500, INVALID_PAYLOAD)
    except ConnectionError:  # the client went away while sending
        response = _abort(request)
    except Exception:
        # Path only: the query string carries the access token.
        logger.exception("fake-valt: unexpected error on %s %s", request.method, request.path)
        response = bodies.internal_error(as_html=False)
    if not isinstance(response, bodies.NoAnswer) and not await _discard_body(request):
        response = _abort(request)
    status = 0 if isinstance(response, bodies.NoAnswer) else response.status
    if quoting and status >= 400:
        response = _quoting_url(request, status, login_body)
    entry = LoggedRequest(
        request.method, request.path, status, request.headers.get(hdrs.CONTENT_RANGE)
    )
    request.app[STATE_KEY].log_request(entry, route_pattern(request))
    return response


def _quoting_url(request: web.Request, status: int, login_body: bytes) -> web.Response:
    """The error answer of a careless server: it quotes the whole request URL, and for
    ``login`` the body it was sent (``quote_url``)."""
    message = f"No route for {request.method} {request.url}"
    if login_body:
        message += f" with {login_body.decode('utf-8', 'replace')}"
    return bodies.error(status, message)


@web.middleware
async def redirect(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``redirect_to``: send every call elsewhere, as a moved server or a hostile proxy."""
    target = request.app[STATE_KEY].faults.redirect_to
    if not _is_api(request) or target is None:
        return await handler(request)
    request.app[STATE_KEY].dice.count("redirect")
    location = target.rstrip("/") + request.path + "?moved=1&session=" + "0123456789abcdef" * 2
    return web.Response(status=307, headers={hdrs.LOCATION: location})


@web.middleware
async def limit_body(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a body over ``max_body`` with nginx's 413 page, judged up front.

    A body without Content-Length (chunked) is judged once read: JSON bodies
    here, uploads by the upload handler, which streams them.
    """
    if not _is_api(request):
        return await handler(request)
    state = request.app[STATE_KEY]
    max_body = state.faults.max_body
    if max_body is not None:
        length = request.content_length
        if length is None and request.body_exists and route_pattern(request) != UPLOAD_ROUTE:
            length = len(await request.read())  # kept by aiohttp for the handler
        if length is not None and length > max_body:
            state.dice.count("max_body")
            return bodies.too_large()
    return await handler(request)


async def _hang(request: web.Request, state: ServerState) -> bodies.NoAnswer:
    """Take the whole request, then never answer (until the client or server gives up)."""
    await _discard_body(request)
    while not state.stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await state.pause(0.2)
    return _abort(request)


async def _drop(request: web.Request) -> bodies.NoAnswer:
    """Read part of an upload's body, then cut the connection; nothing is stored."""
    budget = min(max((request.content_length or 2 * DROP_READ_LIMIT) // 2, 1), DROP_READ_LIMIT)
    taken = 0
    with contextlib.suppress(ConnectionError):
        while taken < budget and (chunk := await request.content.readany()):
            taken += len(chunk)
    return _abort(request)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the faults the dice chose for this request (see :class:`FaultPlan`)."""
    if not _is_api(request):
        return await handler(request)
    state = request.app[STATE_KEY]
    pattern = route_pattern(request)
    plan = state.dice.plan(
        state.faults,
        is_upload=request.method == hdrs.METH_POST and pattern == UPLOAD_ROUTE,
        may_break_json=(request.method, pattern) in BREAKABLE_ROUTES,
    )
    if f"{request.method} {pattern}" in state.faults.fail_calls:
        state.dice.count("fail_call")
        return bodies.internal_error(as_html=False)
    if plan.slow:
        await state.pause(state.faults.slow_seconds)
    if plan.hang:
        return await _hang(request, state)
    if plan.drop:
        return await _drop(request)
    if plan.fail:
        return bodies.internal_error(as_html=plan.fail_html)
    if plan.bad_gateway:
        return bodies.bad_gateway()
    response = await handler(request)
    if plan.not_json:
        # The call took effect; only the answer is lost (a broken proxy).
        return bodies.html(200, "OK")
    return response


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every call but ``login`` needs a live ``?access_token=``."""
    if not _is_api(request) or request.path == LOGIN_PATH:
        return await handler(request)
    state = request.app[STATE_KEY]
    check = state.accounts.use(request.query.get("access_token"), state.faults.token_ttl)
    if check is TokenCheck.EXPIRED:
        state.dice.count("token_expired")
    if check is not TokenCheck.OK:
        return bodies.error(401, check.message)
    return await handler(request)


MIDDLEWARES = (answer_and_record, redirect, limit_body, inject_faults, require_token)
