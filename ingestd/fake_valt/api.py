"""The Valt v3 calls other than the upload itself (see valt-api.md).

Shapes follow the published examples exactly, including their quirks:
``login`` refuses with ``{"data": "..."}`` and no ``error`` key, and
``create-upload`` answers at top level without the ``data`` wrapper.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from aiohttp import web

from ingestd.fake_valt import bodies
from ingestd.fake_valt.context import STATE_KEY
from ingestd.fake_valt.upload import upload_video

INVALID_PAYLOAD = "Invalid request payload"
INVALID_NAME = "Invalid record name"


class InvalidPayload(Exception):
    """The JSON body is missing, malformed or of the wrong shape (Valt: 500)."""


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.read())
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise InvalidPayload from exc
    if not isinstance(payload, dict):
        raise InvalidPayload
    return payload


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def login(request: web.Request) -> web.Response:
    """``POST login``: a 32-hex token, or 401 with Valt's odd refusal shape."""
    state = request.app[STATE_KEY]
    payload = await _json_object(request)
    token = state.accounts.login(payload.get("username"), payload.get("password"))
    if token is None:
        return bodies.data("Invalid username or password", status=401)
    return bodies.data({"access_token": token})


def _template(payload: dict[str, Any]) -> dict[str, str]:
    template = payload.get("template", {})
    if not isinstance(template, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in template.items()
    ):
        raise InvalidPayload
    return template


def _share(payload: dict[str, Any]) -> dict[str, list[int]]:
    share = payload.get("share", {})
    if not isinstance(share, dict):
        raise InvalidPayload
    result: dict[str, list[int]] = {}
    for kind in ("users", "groups"):
        ids = share.get(kind, [])
        if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
            raise InvalidPayload
        result[kind] = ids
    return result


async def create_upload(request: web.Request) -> web.Response:
    """``POST records/create-upload``: a record with one empty video."""
    state = request.app[STATE_KEY]
    payload = await _json_object(request)
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidPayload
    if name in state.faults.refuse_names:
        state.dice.count("refuse_name")
        return bodies.error(400, INVALID_NAME)
    if name in state.faults.fail_names:
        state.dice.count("fail_name")
        return bodies.internal_error(as_html=False)
    record = state.store.create(
        name,
        author=state.accounts.username(request.query.get("access_token", "")),
        template=_template(payload),
        share=_share(payload),
    )
    return web.json_response({"id": record.id, "videos": [v.id for v in record.videos]})


async def get_record(request: web.Request) -> web.Response:
    """``GET records/{id}``: the record with its videos' status."""
    state = request.app[STATE_KEY]
    record = state.store.records.get(request.match_info["record_id"])
    if record is None:
        return bodies.error(404, "Record not found")
    view = record.api_view()
    if state.faults.omit_nulls:
        view = {key: value for key, value in view.items() if value is not None}
    return bodies.data(view)


def _date(payload: dict[str, Any], key: str) -> date | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidPayload
    try:
        return datetime.strptime(value, "%m-%d-%Y").date()
    except ValueError as exc:
        raise InvalidPayload from exc


def _count(payload: dict[str, Any], key: str, default: int) -> int:
    value = payload.get(key, default)
    if not _is_int(value) or value < 0:
        raise InvalidPayload
    return int(value)


async def search_records(request: web.Request) -> web.Response:
    """``POST records``: text search on the name (a substring, not an exact match)."""
    payload = await _json_object(request)
    text = payload.get("search", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InvalidPayload
    found = request.app[STATE_KEY].store.search(
        text,
        start=_date(payload, "start_date"),
        end=_date(payload, "end_date"),
        offset=_count(payload, "offset", 0),
        limit=_count(payload, "limit", 50),
    )
    strict = request.app[STATE_KEY].faults.strict_search
    return bodies.data({"records": [record.search_view(strict=strict) for record in found]})


async def delete_record(request: web.Request) -> web.Response:
    """``POST records/{id}/delete``: the record and its bytes are gone."""
    record_id = request.match_info["record_id"]
    if not request.app[STATE_KEY].store.delete(record_id):
        return bodies.error(404, "Record not found")
    return bodies.data({"id": record_id})


async def admin_general(request: web.Request) -> web.Response:
    """``GET admin/general``: the cheap "server there, token works" call."""
    return bodies.data({"version": "6.7.2"})


def _forbidden(request: web.Request) -> web.Response | None:
    """An ordinary account may not list the directory (``admin_forbidden``)."""
    state = request.app[STATE_KEY]
    if not state.faults.admin_forbidden:
        return None
    state.dice.count("admin_forbidden")
    return bodies.error(403, "Forbidden")


async def admin_users(request: web.Request) -> web.Response:
    """``GET admin/users``."""
    refusal = _forbidden(request)
    if refusal is not None:
        return refusal
    return bodies.data({"users": request.app[STATE_KEY].directory.user_list()})


async def admin_user_groups(request: web.Request) -> web.Response:
    """``GET admin/user_groups``."""
    refusal = _forbidden(request)
    if refusal is not None:
        return refusal
    return bodies.data({"userGroups": request.app[STATE_KEY].directory.group_list()})


async def admin_template(request: web.Request) -> web.Response:
    """``GET admin/templates/{id}``: which field ids exist and which are required."""
    refusal = _forbidden(request)
    if refusal is not None:
        return refusal
    templates = request.app[STATE_KEY].directory.templates
    raw_id = request.match_info["template_id"]
    template = templates.get(int(raw_id)) if raw_id.isdigit() else None
    if template is None:
        return bodies.error(404, "Template not found")
    return bodies.data(template.api_view())


def add_routes(app: web.Application) -> None:
    """Register the Valt v3 calls under ``/api/v3``."""
    prefix = "/api/v3"
    app.router.add_post(f"{prefix}/login", login)
    app.router.add_post(f"{prefix}/records/create-upload", create_upload)
    app.router.add_post(f"{prefix}/records", search_records)
    app.router.add_get(f"{prefix}/records/{{record_id}}", get_record)
    app.router.add_post(f"{prefix}/records/{{record_id}}/delete", delete_record)
    app.router.add_post(f"{prefix}/records/{{record_id}}/videos/{{video_id}}", upload_video)
    app.router.add_get(f"{prefix}/admin/general", admin_general)
    app.router.add_get(f"{prefix}/admin/users", admin_users)
    app.router.add_get(f"{prefix}/admin/user_groups", admin_user_groups)
    app.router.add_get(f"{prefix}/admin/templates/{{template_id}}", admin_template)
