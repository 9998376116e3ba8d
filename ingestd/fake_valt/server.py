"""FakeValt: a Valt v3 test double on a real loopback socket.

Tests talk to it over HTTP exactly as the daemon talks to a real server, then
look inside (``records``, ``request_log``, ``snapshot()``) to see what arrived.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from ingestd.fake_valt import api, control
from ingestd.fake_valt.auth import Accounts
from ingestd.fake_valt.context import STATE_KEY, LoggedRequest, ServerState
from ingestd.fake_valt.directory import Directory, Template
from ingestd.fake_valt.faults import Faults
from ingestd.fake_valt.middleware import MIDDLEWARES
from ingestd.fake_valt.state import Record, Store

DEFAULT_USERS: Mapping[str, str] = {"ingest": "secret"}
JSON_BODY_LIMIT = 64 * 1024 * 1024
"""aiohttp's own cap on JSON bodies (uploads stream and are not affected)."""
SHUTDOWN_TIMEOUT = 5.0
"""Seconds ``stop()`` lets requests in progress finish before cancelling them."""


class FakeValt:
    """A fake Valt server: the API of valt-api.md plus switchable faults.

    ``data_dir`` holds the uploaded bytes (a temporary folder, removed when
    this object is collected, if None). ``users`` maps login names to
    passwords. ``admin_users``/``admin_groups`` (name -> id) and
    ``templates`` are what the ``admin/*`` calls list. With ``keep_bytes``
    False bytes are counted and hashed but not stored (long soak runs); with
    ``hash_bytes`` False too they are only counted, the chunk rules still held
    (a benchmark whose server must not be the slowest party).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        users: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        keep_bytes: bool = True,
        hash_bytes: bool = True,
        admin_users: Mapping[str, int] | None = None,
        admin_groups: Mapping[str, int] | None = None,
        templates: Iterable[Template] | None = None,
    ) -> None:
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="fake-valt-"))
            weakref.finalize(self, shutil.rmtree, data_dir, ignore_errors=True)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
        self._state = ServerState(
            Store(data_dir, keep_bytes=keep_bytes, hash_bytes=hash_bytes),
            Accounts(DEFAULT_USERS if users is None else users),
            Directory(admin_users, admin_groups, templates),
            Faults() if faults is None else faults,
        )
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def make_app(self) -> web.Application:
        """The aiohttp application, for callers that run it themselves."""
        app = web.Application(middlewares=MIDDLEWARES, client_max_size=JSON_BODY_LIMIT)
        app[STATE_KEY] = self._state
        api.add_routes(app)
        control.add_routes(app)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0: a free port; see :attr:`url`); HTTPS with ``ssl_context``."""
        if self._runner is not None:
            raise RuntimeError("the fake Valt server is already running")
        self._state.stopping.clear()
        # No access log: request URLs carry access tokens.
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        scheme = "http" if ssl_context is None else "https"
        self._url = f"{scheme}://{shown_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening; hung requests are let go. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._state.stopping.set()
        await runner.cleanup()

    async def __aenter__(self) -> FakeValt:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https`` when started with TLS), without ``/api/v3``."""
        if self._url is None:
            raise RuntimeError("the fake Valt server has not been started")
        return self._url

    @property
    def data_dir(self) -> Path:
        """Where uploaded bytes are kept, one folder per record."""
        return self._state.store.data_dir

    @property
    def state(self) -> ServerState:
        """Everything the server knows; the properties below are views of it."""
        return self._state

    @property
    def records(self) -> dict[str, Record]:
        """Live records by id."""
        return self._state.store.records

    @property
    def deleted(self) -> list[str]:
        """Ids of records deleted through the API, oldest first."""
        return self._state.store.deleted

    @property
    def request_log(self) -> list[LoggedRequest]:
        """``(method, path, status, content_range)`` of recent API requests."""
        return self._state.request_log

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests by ``METHOD /route-pattern`` (never capped)."""
        return self._state.request_counts

    @property
    def upload_bytes_received(self) -> int:
        """File bytes of every upload that reached the handler, repeats included."""
        return self._state.upload_bytes_received

    @property
    def chunk_repeats(self) -> int:
        """Chunks that were wholly inside what a video held (harmless no-ops)."""
        return self._state.chunk_repeats

    @property
    def overlapping_chunks(self) -> int:
        """Chunk requests that began while another for the same video was in flight."""
        return self._state.overlapping_chunks

    @property
    def overlapping_records(self) -> list[str]:
        """The record id of each overlapping chunk request, in order."""
        return self._state.overlapping_records

    @property
    def logins(self) -> int:
        """Successful logins."""
        return self._state.accounts.logins

    @property
    def login_failures(self) -> int:
        """Refused logins (wrong credentials)."""
        return self._state.accounts.login_failures

    @property
    def faults(self) -> Faults:
        """The live fault switches; assigning a new set restarts the dice."""
        return self._state.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._state.faults = faults

    @property
    def faults_injected(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        return self._state.dice.injected

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault switches with validation (unknown names are an error)."""
        return self._state.set_faults(changes)

    def seed_record(
        self,
        name: str = "Interview",
        *,
        created: int | None = None,
        author: str = "other-machine",
        with_video: bool = False,
    ) -> str:
        """Add a record as another machine would have made it; returns its id."""
        return self._state.seed_record(name, created=created, author=author, with_video=with_video)

    def video_bytes(self, record_id: str) -> bytes:
        """The bytes held for a record's video (reads the stored file)."""
        return self._state.store.video_bytes(record_id)

    def snapshot(self) -> dict[str, Any]:
        """The JSON-able state, as ``GET /_fake/state`` answers it."""
        return self._state.snapshot()
