"""FakeValtThread: the fake server in its own thread and event loop.

For synchronous tests, and for tests whose daemon runs as a subprocess: the
server keeps answering while the test blocks on ``subprocess.run``. Every
method hops into the server's loop, so calls from the test thread are safe.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ingestd.fake_valt.directory import Template
from ingestd.fake_valt.faults import Faults
from ingestd.fake_valt.server import FakeValt

T = TypeVar("T")

CALL_TIMEOUT = 30.0
"""Seconds a call into the server thread may take before it is an error."""


class FakeValtThread:
    """Run a :class:`FakeValt` in a background thread; use as a context manager."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        users: Mapping[str, str] | None = None,
        faults: Faults | None = None,
        keep_bytes: bool = True,
        admin_users: Mapping[str, int] | None = None,
        admin_groups: Mapping[str, int] | None = None,
        templates: Iterable[Template] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._make_fake = functools.partial(
            FakeValt,
            data_dir,
            users=users,
            faults=faults,
            keep_bytes=keep_bytes,
            admin_users=admin_users,
            admin_groups=admin_groups,
            templates=templates,
        )
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self._fake: FakeValt | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._started: Future[None] = Future()

    def start(self) -> None:
        """Start the thread and return once the server listens (or raise why not)."""
        if self._thread is not None:
            raise RuntimeError("FakeValtThread is already started")
        self._thread = threading.Thread(target=self._run, name="fake-valt", daemon=True)
        self._thread.start()
        try:
            self._started.result(timeout=CALL_TIMEOUT)
        except BaseException:
            self._thread.join(CALL_TIMEOUT)
            raise

    def stop(self) -> None:
        """Stop the server and join the thread. Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(CALL_TIMEOUT)

    def __enter__(self) -> FakeValtThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._fake = self._make_fake()
            await self._fake.start(self._host, self._port, ssl_context=self._ssl_context)
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self._fake.stop()

    @property
    def fake(self) -> FakeValt:
        """The server object itself. Read it from this thread only when it is idle."""
        if self._fake is None:
            raise RuntimeError("FakeValtThread is not started")
        return self._fake

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https`` with ``ssl_context``), without ``/api/v3``."""
        return self.fake.url

    def call(self, function: Callable[[FakeValt], T]) -> T:
        """Run ``function(fake)`` inside the server's loop and return its result.

        After :meth:`stop` it runs here directly, so a test can inspect what
        the server received once it is gone.
        """
        fake, loop = self.fake, self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return function(fake)  # stopped: nothing else touches it any more

        async def in_loop() -> T:
            return function(fake)

        return asyncio.run_coroutine_threadsafe(in_loop(), loop).result(CALL_TIMEOUT)

    def snapshot(self) -> dict[str, Any]:
        """The JSON-able state (as ``GET /_fake/state``)."""
        return self.call(lambda fake: fake.snapshot())

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault switches with validation; returns the new set."""
        return self.call(lambda fake: fake.set_faults(**changes))

    def seed_record(
        self,
        name: str = "Interview",
        *,
        created: int | None = None,
        author: str = "other-machine",
        with_video: bool = False,
    ) -> str:
        """Add a record as another machine would have made it; returns its id."""
        return self.call(
            lambda fake: fake.seed_record(
                name, created=created, author=author, with_video=with_video
            )
        )

    def video_bytes(self, record_id: str) -> bytes:
        """The bytes held for a record's video."""
        return self.call(lambda fake: fake.video_bytes(record_id))
