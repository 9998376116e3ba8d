"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

A websocket with aiohttp, nothing else: no WebDriver, no Selenium Manager, nothing
downloaded while the tests run. ``make chromium`` installs the browser.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

# Keep the browser off the network: no updates, no sync, no metrics, no first-run pages.
QUIET_FLAGS = (
    "--headless=new",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-pings",
    "--mute-audio",
    "--window-size=1280,1000",
)


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed: run `make chromium` (apt-get install chromium)"
    return None


class Browser:
    """One headless Chromium with one page, over its DevTools websocket."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        flags = [*QUIET_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-port=0"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        with open(self.profile / "chromium.log", "wb") as log:  # the child keeps its own copy
            self.process = await asyncio.create_subprocess_exec(
                "chromium", *flags, "about:blank", stdout=log, stderr=subprocess.STDOUT
            )
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            targets = await answer.json()
        page = next(target for target in targets if target["type"] == "page")
        self._socket = await self._session.ws_connect(
            page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024
        )
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def _devtools_port(self, timeout: float = 30) -> int:
        """The port Chromium chose; it writes it to DevToolsActivePort when it listens."""
        marker = self.profile / "DevToolsActivePort"
        for _ in range(int(timeout / 0.1)):
            assert self.process is not None
            if self.process.returncode is not None:
                log = (self.profile / "chromium.log").read_text(errors="replace")
                raise AssertionError(f"chromium exited {self.process.returncode}: {log[-2000:]}")
            if marker.exists():
                first = marker.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            await asyncio.sleep(0.1)
        raise AssertionError(f"chromium opened no DevTools port within {timeout} s")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command and its result (events that arrive meanwhile are dropped)."""
        assert self._socket is not None
        ident = next(self._ids)
        await self._socket.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(self._socket.receive(), 30)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools socket closed during {method}: {message.type}")
            answer = json.loads(message.data)
            if answer.get("id") != ident:
                continue
            if "error" in answer:
                raise AssertionError(f"{method}: {answer['error']}")
            result: dict[str, Any] = answer["result"]
            return result

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values only)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        """The whole page as PNG at ``path``."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
