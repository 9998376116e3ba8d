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
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from pathlib import PurePath
from typing import Any, TextIO

_SECRETS: set[str] = set()  # passwords: few, kept for the process's life
# Tokens: a new one every few hours for months. Only the newest can be in a message still
# being built (older ones were scrubbed when theirs was), so the list stays this short.
RECENT_TOKENS = 4
_TOKENS: deque[str] = deque(maxlen=RECENT_TOKENS)
_SECRETS_LOCK = threading.Lock()
# The secrets longest first (a longer one may contain a shorter), rebuilt on each change.
_SECRETS_ORDER: tuple[str, ...] = ()
# A URL's query string, or a bare access_token parameter anywhere in a text.
_QUERY_RE = re.compile(r"(?i)(\?[\w.%-]+=[^\s\"'<>]*)|(access_token=[^\s&\"'<>]*)")
_SECRET_MIN_LEN = 4
_PATH_KEYS = frozenset({"path", "dest", "source", "relpath", "file", "marker", "earlier_path"})
# Record names are made from file and folder names ("{parent} {stem}").
_NAME_KEYS = frozenset({"name"})
# Fields that never hold a path: left alone when free text is searched for one. (A
# standard-library record's message is its "event": that one is searched.)
_STRUCTURAL_KEYS = frozenset({"event", "level", "timestamp", "logger"})
# Shorter file or folder names are not searched for in free text: "1" would hit every digit.
_PIECE_MIN_LEN = 3

Processor = Any  # structlog's processor type is a broad Callable union


def register_secret(secret: str | None, *, token: bool = False) -> None:
    """Scrub this string from every future log line and error message.

    A password (the default) is kept for the life of the process; a ``token``
    only while it is among the :data:`RECENT_TOKENS` newest, so that a daemon
    that logs in every 8 hours for a year does not scan thousands of dead
    tokens on every log line.
    """
    global _SECRETS_ORDER
    if secret and len(secret) >= _SECRET_MIN_LEN:
        with _SECRETS_LOCK:
            if not token:
                _SECRETS.add(secret)
            elif secret not in _TOKENS:
                _TOKENS.append(secret)
            _SECRETS_ORDER = tuple(sorted(_SECRETS | set(_TOKENS), key=len, reverse=True))


def redact_text(text: str) -> str:
    """Remove URL query strings and registered secrets from ``text``."""
    for secret in _SECRETS_ORDER:  # one tuple, replaced whole: no lock needed to read it
        if secret in text:
            text = text.replace(secret, "[redacted]")
    if "=" not in text:  # both forms of _QUERY_RE hold an "="
        return text
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


def _name_token(name: object) -> str:
    digest = hashlib.sha256(str(name).encode("utf-8", "surrogateescape")).hexdigest()
    return f"name:{digest[:12]}"


class _PathRedactor:
    """structlog processor for ``log.redact_paths``: no path, file or folder name gets out.

    Path-like fields become :func:`path_token`, record names (made from file and
    folder names) a ``name:`` hash. Every other text of the line - ``detail``,
    ``error``, ``reason``, a rendered traceback - is searched for what those
    fields held: the whole path, the file's name and stem, and the folders
    between the watch root and the file (a sidecar's name in a parse error, a
    record name in a server's message, a marker's name in a wait reason). The
    watch roots themselves become ``[watch root]`` wherever they appear.
    """

    def __init__(self, enabled: bool, roots: Sequence[str] = ()) -> None:
        self.enabled = enabled
        self.roots = sorted({os.path.abspath(root) for root in roots}, key=len, reverse=True)

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.enabled:
            return event_dict
        pieces: dict[str, str] = {}
        for key in _PATH_KEYS & event_dict.keys():
            value = event_dict[key]
            event_dict[key] = token = path_token(value)
            pieces.update(self._pieces(str(value), token))
        for key in _NAME_KEYS & event_dict.keys():
            value = event_dict[key]
            event_dict[key] = pieces[str(value)] = _name_token(value)
        for root in self.roots:
            pieces.setdefault(root, "[watch root]")
        order = sorted(pieces, key=len, reverse=True)
        skip = _PATH_KEYS | _NAME_KEYS | _STRUCTURAL_KEYS
        if not event_dict.get("_from_structlog"):
            skip -= {"event"}
        for key, value in event_dict.items():
            if isinstance(value, str) and key not in skip:
                for piece in order:
                    if piece in value:
                        value = value.replace(piece, pieces[piece])
                event_dict[key] = value
        return event_dict

    def _pieces(self, path: str, token: str) -> dict[str, str]:
        """The texts that give ``path`` away, each mapped to its token."""
        found = {path: token}
        pure = PurePath(path)
        names = [pure.name, pure.stem]
        root = next((r for r in self.roots if path.startswith(r.rstrip(os.sep) + os.sep)), None)
        if root is not None:
            names += PurePath(path[len(root) :].lstrip(os.sep)).parts
        for name in names:
            if len(name) >= _PIECE_MIN_LEN:
                found.setdefault(name, token)
        return found


def redact_path_fields(fields: MutableMapping[str, Any], roots: Sequence[str]) -> dict[str, Any]:
    """``fields`` as a log line under ``log.redact_paths`` shows them (the status page uses
    it): ``path`` and ``name`` become tokens, other texts lose the names they held."""
    return dict(_PathRedactor(True, roots)(None, "", dict(fields)))


CLEAR_LINE = "\r\x1b[K"


class LiveLine:
    """One line kept below the log lines on a terminal: ``run``'s progress.

    The log writer takes the same lock: it clears this line, writes its own
    line, and draws this one again under it, so the two never run together.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.Lock()

    def show(self, text: str) -> None:
        global _live
        with self.lock:
            self.text = text
            self.stream.write(CLEAR_LINE + text)
            self.stream.flush()
            _live = self

    def end(self) -> None:
        """Leave the last text on its own line; log lines go below it from now on."""
        global _live
        with self.lock:
            if self.text:
                self.stream.write("\n")
                self.stream.flush()
            self.text = ""
            if _live is self:
                _live = None

    def around(self, write: Callable[[], None]) -> None:
        """Call ``write()`` with this line cleared, then draw it again."""
        with self.lock:
            if self.text:
                self.stream.write(CLEAR_LINE)
                self.stream.flush()
            write()
            if self.text:
                self.stream.write(self.text)
                self.stream.flush()


_live: LiveLine | None = None  # the one shown now, if any


class _BelowLiveLine:
    """A terminal stream for log lines that keeps the live line (if any) below them."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        live = _live
        if live is None:
            return self._out.write(text)

        def write() -> None:
            self._out.write(text)
            self._out.flush()

        live.around(write)
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno...: the stream's own
        return getattr(self._out, name)


def _shared_processors() -> list[Processor]:
    import structlog

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    *,
    fmt: str = "auto",
    level: str = "info",
    redact_paths: bool = False,
    watch_roots: Sequence[object] = (),
    stream: TextIO | None = None,
) -> None:
    """Send structlog's events and the standard library's records to ``stream``, one line each.

    ingestd's own events go straight from structlog's processors to the stream:
    through the standard library they cost two LogRecords and a stack walk each,
    a tenth of the event loop's time with thousands of small files. Records of
    the standard library (aiohttp, asyncio) take its handler, with the same
    redaction and rendering.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console on a TTY). With
    ``redact_paths``, ``watch_roots`` (``watch.paths``) tells the folders below
    a root, which may carry names, from the root's own path.
    """
    import structlog

    out = stream if stream is not None else sys.stdout
    if out.isatty():  # where a live line can share the screen
        out = _BelowLiveLine(out)
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
    shared = _shared_processors()
    # After the traceback is rendered (it may quote a path too), before the meta keys
    # go (they tell a standard-library record, whose "event" is free text).
    redactor = _PathRedactor(redact_paths, [str(root) for root in watch_roots])
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[*exc, redactor, _drop_meta, scrub_event, renderer],
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
    # watchfiles logs every batch of changes at info; aiosqlite logs every statement,
    # with its values (paths), at debug: neither belongs in the daemon's log.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, _mark_own, *exc, redactor, _drop_meta, scrub_event, renderer],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # Module-level loggers must pick up a configure_logging() made after their import.
        cache_logger_on_first_use=False,
    )


def _mark_own(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Tell :class:`_PathRedactor` that "event" is an event name, not free text."""
    event_dict["_from_structlog"] = True
    return event_dict


def _drop_meta(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


def get_logger(name: str = "ingestd", **context: Any) -> Any:
    """A structlog logger with ``context`` bound (``job_id``, ``path``...)."""
    return _Logger(name, context)


class _Logger:
    """structlog's lazy proxy, made at the first call: module-level loggers pick up a
    configure_logging() made after their import, and a command that logs nothing (``ingestd
    status``, run every few seconds by scripts) never imports structlog (~25 ms)."""

    __slots__ = ("_args", "_proxy")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._args = (name, context)
        self._proxy: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._proxy is None:
            import structlog

            name, context = self._args
            self._proxy = structlog.get_logger(name, **context)
        return getattr(self._proxy, attribute)


def secrets_in(text: str, secrets: Iterable[str], window: int = 8) -> list[str]:
    """Every ``window``-long piece of each secret that occurs in ``text`` (for tests)."""
    found = []
    for secret in secrets:
        for i in range(max(0, len(secret) - window + 1)):
            piece = secret[i : i + window]
            if piece in text:
                found.append(piece)
    return found
