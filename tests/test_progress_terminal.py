"""On a terminal the progress line stays below the log lines and never runs into one.

Before, a log line was written straight after the progress line, on the same row:
``[1/3 files] ..., 1 waiting to be finished2026-12-01T05:45:45Z [info ] file.ready``.
"""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog
from conftest import REPO, ingestd_env, random_file, stop_process, write_config

from ingestd.daemon.progress import ProgressLine
from ingestd.fake_valt import FakeValtThread
from ingestd.logs import configure_logging

_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_PROGRESS = re.compile(r"\[\d+/\d+ files\]")
CLEAR_LINE = "\r\x1b[K"


def screen(raw: str) -> list[str]:
    """The rows a terminal shows: each row keeps what follows its last clear-line."""
    rows = []
    for row in _COLOURS.sub("", raw).replace("\r\n", "\n").split("\n"):
        rows.append(row.rsplit(CLEAR_LINE, 1)[-1].rsplit("\r", 1)[-1])
    return [row for row in rows if row.strip()]


def run_together(rows: list[str]) -> list[str]:
    """Rows that hold both the progress line and a log line."""
    return [row for row in rows if _PROGRESS.search(row) and not _PROGRESS.match(row)] + [
        row for row in rows if _PROGRESS.match(row) and re.search(r"\[(info|warning)\s*\]", row)
    ]


def _read(master: int, until: float, stop: str | None = None) -> str:
    """What the terminal received until EOF (the process ended), ``until``, or ``stop``."""
    chunks: list[bytes] = []
    while time.monotonic() < until:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            if stop is not None and stop in screen_text(chunks):
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def screen_text(chunks: list[bytes]) -> str:
    return "\n".join(screen(b"".join(chunks).decode(errors="replace")))


def _on_a_terminal(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ingestd", *args],
        env=ingestd_env(),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
    )
    os.close(slave)
    return process, master


def test_a_log_line_clears_the_progress_line_which_comes_back_below_it() -> None:
    master, slave = os.openpty()
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with open(slave, "w", closefd=True) as terminal:
        try:
            configure_logging(fmt="console", stream=terminal)
            line = ProgressLine(terminal)
            line.line.show("[0/2 files] 0 B of 2 KiB")
            structlog.get_logger("ingestd").info("file.ready", job_id=1)
            line.line.show("[1/2 files] 1 KiB of 2 KiB")
            line.line.end()
            structlog.get_logger("ingestd").info("after.the.end")
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)
    raw = _read(master, time.monotonic() + 5)
    os.close(master)
    rows = screen(raw)
    assert run_together(rows) == [], rows
    assert len(rows) == 3, rows
    assert "file.ready" in rows[0] and rows[1] == "[1/2 files] 1 KiB of 2 KiB", rows
    assert "after.the.end" in rows[2], rows


def test_run_once_on_a_terminal_keeps_progress_and_log_lines_apart(
    tmp_path: Path, server: FakeValtThread
) -> None:
    export = tmp_path / "export"
    for n in range(3):
        random_file(export / f"clip{n}.mp4", 600_000, seed=n)
    (export / "late.mp4.part").write_bytes(b"x")  # ignored: no job for it
    # At debug: file.ready and the other per-file lines come while the progress line shows.
    config = write_config(tmp_path, server.url, log={"format": "console", "level": "debug"})
    process, master = _on_a_terminal("run", "-c", str(config), "--once", "--max-wait", "20s")
    raw = _read(master, time.monotonic() + 60)
    os.close(master)
    assert process.wait(30) == 0, raw
    rows = screen(raw)
    assert run_together(rows) == [], rows
    assert any(row.startswith("[3/3 files]") for row in rows), rows
    assert any("file.ready" in row for row in rows), rows


def test_the_daemon_shows_its_progress_line_on_a_terminal(
    tmp_path: Path, server: FakeValtThread
) -> None:
    export = tmp_path / "export"
    random_file(export / "clip.mp4", 600_000)
    config = write_config(tmp_path, server.url, log={"format": "console"})
    process, master = _on_a_terminal("run", "-c", str(config))
    try:
        raw = _read(master, time.monotonic() + 60, stop="[1/1 files] 585.9 KiB of 585.9 KiB")
    finally:
        stop_process(process, signal.SIGTERM)
    raw += _read(master, time.monotonic() + 10)
    os.close(master)
    rows = screen(raw)
    done = "[1/1 files] 585.9 KiB of 585.9 KiB"
    assert any(row.startswith(done) for row in rows), "\n".join(rows)
    assert run_together(rows) == [], rows
