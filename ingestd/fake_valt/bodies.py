"""Canned answers: Valt's JSON error shape and the HTML pages nginx and PHP send.

The real server answers some failures with HTML instead of JSON (nginx limits,
a dead PHP backend); the client must cope, so the fake sends them verbatim.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

HTML_500 = "<html><body><h1>500 Internal Server Error</h1></body></html>"


def nginx_page(status: int, reason: str) -> str:
    """The body of one of nginx's built-in error pages."""
    title = f"{status} {reason}"
    return (
        f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center>"
        "<hr><center>nginx</center></body></html>"
    )


def error(status: int, message: str) -> web.Response:
    """Valt's error shape: ``{"error": {"code": N, "message": "..."}}``."""
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


def data(payload: Any, status: int = 200) -> web.Response:
    """Valt's usual success shape: the payload wrapped in ``{"data": ...}``."""
    return web.json_response({"data": payload}, status=status)


def html(status: int, body: str) -> web.Response:
    """An HTML answer, as a web server or a broken proxy sends it."""
    return web.Response(status=status, text=body, content_type="text/html")


def too_large() -> web.Response:
    """nginx's 413 for a body over ``client_max_body_size``."""
    return html(413, nginx_page(413, "Request Entity Too Large"))


def bad_gateway() -> web.Response:
    """nginx's 502 when the PHP backend is down."""
    return html(502, nginx_page(502, "Bad Gateway"))


def internal_error(*, as_html: bool) -> web.Response:
    """A 500, either as PHP's JSON error or as a bare HTML page."""
    if as_html:
        return html(500, HTML_500)
    return error(500, "Internal Server Error")


def empty_ok() -> web.Response:
    """The empty 200 Valt gives for a chunk that is not the last one."""
    return web.Response(status=200, body=b"", content_type="text/html")


class NoAnswer(web.Response):
    """Returned when the connection was dropped or abandoned: nothing is sent.

    The request log records it with status 0.
    """

    def __init__(self) -> None:
        super().__init__(status=599)
