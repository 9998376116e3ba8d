"""structlog set-up: one JSON object a line on stdout, with secrets scrubbed.

Every line passes through :func:`scrub_event` last, so a token, a password or a
URL query string cannot reach the output even when a bug puts one into an
event or an exception message: the registered secrets are replaced wherever
they appear, and ``?query`` parts of URLs are cut. Tracebacks are rendered as
plain text without local variables (structlog can render locals; they would
carry the token).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
# A URL's query string, or a bare access_token parameter anywhere in a text.
_QUERY_RE = re.compile(r"(?i)(\?[\w.%-]+=[^\s\"'<>]*)|(access_token=[^\s&\"'<>]*)")
_SECRET_MIN_LEN = 4
_PATH_KEYS = frozenset({"path", "dest", "source", "relpath", "file", "marker"})

Processor = Any  # structlog's processor type is a broad Callable union


def register_secret(secret: str | None) -> None:
    """Scrub this string from every future log line (tokens, passwords)."""
    if secret and len(secret) >= _SECRET_MIN_LEN:
        with _SECRETS_LOCK:
            _SECRETS.add(secret)


def redact_text(text: str) -> str:
    """Remove URL query strings and registered secrets from ``text``."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return _QUERY_RE.sub(_replace_query, text)


def _replace_query(match: re.Match[str]) -> str:
    return "?[query redacted]" if match.group(1) else "[query redacted]"


def redact_url(url: object) -> str:
    """A URL fit for a log line: scheme, host and path, never the query string."""
    text = str(url)
    return redact_text(text.split("?", 1)[0]) + ("?[query redacted]" if "?" in text else "")


def path_token(path: object) -> str:
    """A stable stand-in for a path when ``log.redact_paths`` is on."""
    digest = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()
    return f"path:{digest[:12]}"


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


def scrub_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the last line of defence against leaked secrets."""
    return {key: _scrub_value(value) for key, value in event_dict.items()}


class _PathRedactor:
    """structlog processor replacing path-like fields by a hash (``log.redact_paths``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self.enabled:
            for key in _PATH_KEYS & event_dict.keys():
                event_dict[key] = path_token(event_dict[key])
        return event_dict


def _shared_processors(redact_paths: bool) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _PathRedactor(redact_paths),
    ]


def configure_logging(
    *,
    fmt: str = "auto",
    level: str = "info",
    redact_paths: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and the standard library's logging to one handler on ``stream``.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a TTY).
    """
    out = stream if stream is not None else sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        exc: list[Processor] = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        exc = [structlog.processors.format_exc_info]
    shared = _shared_processors(redact_paths)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc,
            scrub_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would print request lines; the client logs nothing useful.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # watchfiles logs every batch of changes at info.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "ingestd", **context: Any) -> Any:
    """A structlog logger with ``context`` bound (``job_id``, ``path``...)."""
    # A lazy proxy: module-level loggers must pick up configure_logging() made later.
    return structlog.get_logger(name, **context)


def secrets_in(text: str, secrets: Iterable[str], window: int = 8) -> list[str]:
    """Every ``window``-long piece of each secret that occurs in ``text`` (for tests)."""
    found = []
    for secret in secrets:
        for i in range(max(0, len(secret) - window + 1)):
            piece = secret[i : i + window]
            if piece in text:
                found.append(piece)
    return found
