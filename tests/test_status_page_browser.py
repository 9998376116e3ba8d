"""The status page in a real browser: headless Debian Chromium over the DevTools protocol,
a real daemon, the fake Valt server answering slowly. The page shows the totals, a
progress bar that moves while a file uploads, and a failure with its retry command.

Screenshots are kept: under the test's tmp folder (the path is printed) and in
``build/`` when it exists.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium_missing
from conftest import (
    REPO,
    KiB,
    MiB,
    free_port,
    ledger_rows,
    random_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread

TOKEN = "browser-token-0123456789abcdef"
BIG = 8 * MiB  # 32 chunks of 256 KiB, each answered 0.3 s late: about 10 s of upload

# What the test reads of the page: the totals, each progress bar, each retry command.
READ_PAGE = """(() => !document.getElementById("offline") ? null : ({
  updated: document.body.dataset.updated || null,
  offline: getComputedStyle(document.getElementById("offline")).display !== "none",
  totals: Object.fromEntries([...document.querySelectorAll(".total")].map(
    (t) => [t.querySelector("span").textContent, Number(t.querySelector("b").textContent)])),
  bars: [...document.querySelectorAll("[role=progressbar]")].map((bar) => ({
    job: Number(bar.dataset.job),
    percent: Number(bar.getAttribute("aria-valuenow")),
    width: bar.firstChild.style.width,
  })),
  retries: [...document.querySelectorAll("code.retry")].map((code) => code.textContent),
}))()"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _keep(shot: Path) -> None:
    print(f"status page screenshot: {shot}")
    build = REPO / "build"
    if build.is_dir():
        shutil.copy(shot, build / shot.name)
        print(f"status page screenshot: {build / shot.name}")


async def _until(browser: Browser, check: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page: dict[str, Any] | None = await browser.evaluate(READ_PAGE)
        if page is not None and check(page):
            return page
        await asyncio.sleep(0.25)
    raise AssertionError(f"the page did not show it within {timeout} s: {page}")


async def test_the_page_shows_totals_a_moving_progress_bar_and_a_retry_command(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    reason = chromium_missing()
    if reason:  # a skipped test is not a pass: say what to install
        pytest.fail(reason)
    random_file(export / "small.mp4", 100 * KiB, seed=1)
    random_file(export / "refused.mp4", 100 * KiB, seed=2)
    token_file = tmp_path / "status-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server.set_faults(refuse_names=["refused"], slow_rate=1.0, slow_seconds=0.3)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1},  # one after the other: the big one uploads alone, slowly
        status={"listen": f"127.0.0.1:{port}", "token_file": str(token_file)},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _answers(port), timeout=60)
        async with Browser(tmp_path / "chromium") as browser:
            # A person types the token as the password; the page's own requests reuse it.
            await browser.open(f"http://operator:{TOKEN}@127.0.0.1:{port}/")
            page = await _until(browser, lambda p: p["updated"] and not p["offline"], 60)
            await _until(browser, lambda p: p["totals"].get("failed") == 1, 60)
            random_file(export / "big.mp4", BIG, seed=3)

            seen: list[float] = []  # the big file's bar, as drawn
            shot = None
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                page = await browser.evaluate(READ_PAGE) or page
                for bar in page["bars"]:
                    if 0 < bar["percent"] < 100 and bar["width"] == f"{bar['percent']}%":
                        if not seen or bar["percent"] != seen[-1]:
                            seen.append(bar["percent"])
                        if len(seen) == 2 and shot is None:
                            shot = await browser.screenshot(tmp_path / "status-page-uploading.png")
                if page["totals"].get("done") == 2:
                    break
                await asyncio.sleep(0.25)
            page = await _until(browser, lambda p: p["totals"].get("done") == 2, 30)
            final = await browser.screenshot(tmp_path / "status-page.png")
    finally:
        assert stop_process(daemon) == 0
    assert shot is not None, f"no progress bar moved: {seen}"
    _keep(shot)
    _keep(final)
    assert len(seen) >= 2 and seen == sorted(seen), seen
    assert page["totals"] == {
        "waiting": 0,
        "queued": 0,
        "creating": 0,
        "uploading": 0,
        "confirming": 0,
        "done": 2,
        "failed": 1,
        "skipped": 0,
    }
    [failed] = [row for row in ledger_rows(tmp_path / "ledger.db") if row["state"] == "failed"]
    assert page["retries"] == [f"ingestd retry {failed['id']}"]
    assert final.stat().st_size > 10 * KiB
    assert TOKEN not in (tmp_path / "daemon.log").read_text(errors="replace")
