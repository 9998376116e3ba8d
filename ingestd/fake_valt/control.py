"""``/_fake``: look inside the fake server and steer it over HTTP.

For a person with curl, and for tests whose daemon (or fake) runs in another
process. No token, no faults: these calls are not part of Valt.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ingestd.fake_valt.context import STATE_KEY


def _refuse(message: str) -> web.Response:
    return web.json_response({"error": {"code": 400, "message": message}}, status=400)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        payload = json.loads(await request.read() or b"{}")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


async def get_state(request: web.Request) -> web.Response:
    """``GET /_fake/state``: records, deleted ids, request counts, fault counts."""
    return web.json_response(request.app[STATE_KEY].snapshot())


async def post_faults(request: web.Request) -> web.Response:
    """``POST /_fake/faults``: merge new fault values; answers the whole set."""
    changes = await _json_object(request)
    if changes is None:
        return _refuse("expected a JSON object of fault settings")
    try:
        faults = request.app[STATE_KEY].set_faults(changes)
    except (TypeError, ValueError) as exc:
        return _refuse(str(exc))
    return web.json_response(faults.as_dict())


async def post_seed(request: web.Request) -> web.Response:
    """``POST /_fake/seed``: add a record as another machine would have made it."""
    payload = await _json_object(request)
    if payload is None:
        return _refuse("expected a JSON object {name, created?, author?, with_video?}")
    name = payload.get("name", "Interview")
    created = payload.get("created")
    author = payload.get("author", "other-machine")
    with_video = payload.get("with_video", False)
    if (
        not isinstance(name, str)
        or not name
        or not (created is None or (isinstance(created, int) and not isinstance(created, bool)))
        or not isinstance(author, str)
        or not isinstance(with_video, bool)
    ):
        return _refuse("name and author must be strings, created an integer, with_video a bool")
    record_id = request.app[STATE_KEY].seed_record(
        name, created=created, author=author, with_video=with_video
    )
    return web.json_response({"id": record_id})


def add_routes(app: web.Application) -> None:
    """Register the control calls under ``/_fake``."""
    app.router.add_get("/_fake/state", get_state)
    app.router.add_post("/_fake/faults", post_faults)
    app.router.add_post("/_fake/seed", post_seed)
