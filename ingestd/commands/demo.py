"""``ingestd demo``: the whole loop on this machine, no server needed.

Starts the fake Valt server on loopback, runs the daemon on a temporary
export folder, and plays a capture machine: some recordings appear at once,
one is written slowly over several seconds (it waits until it is finished),
one arrives later in a subfolder. Prints a table when all are confirmed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from ingestd.config.load import parse_config
from ingestd.daemon.lifecycle import Daemon
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.intake.mp4_build import MiB, mp4_pieces
from ingestd.ledger.api import open_ledger
from ingestd.ledger.model import State
from ingestd.logs import configure_logging

DEMO_TIMEOUT = 90.0
PASSWORD = "demo-secret"


def write_file(path: Path, size: int, seconds: float = 0.0) -> None:
    """Write an MP4 like a capture program: all at once, or spread over ``seconds``."""
    pieces = mp4_pieces(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            if seconds:
                time.sleep(seconds / len(pieces))


def _config(folder: Path, url: str) -> dict[str, object]:
    return {
        "valt": {"url": url, "username": "ingest", "password": PASSWORD},
        "watch": {"paths": [str(folder / "export")], "settle": "2s", "rescan_interval": "30s"},
        "upload": {"workers": 2, "chunk_size": "1MiB", "backoff_initial": "0.5s"},
        "record": {"name": "{stem} ({mtime:%Y-%m-%d})"},
        "ledger": {"path": str(folder / "ledger.db")},
        "log": {"format": "console"},
        "status": {"listen": None},
    }


async def _play_capture_machine(export: Path) -> list[str]:
    """Write the demo's recordings; returns their names."""
    export.mkdir(parents=True, exist_ok=True)
    plan = [
        ("Interview room 1.mp4", 6 * MiB, 0.0, 0.0),
        ("Interview room 2.MP4", 12 * MiB, 0.0, 0.0),
        ("Sim lab - scenario A.mp4", 3 * MiB, 0.0, 0.0),
        ("Long take (written slowly).mp4", 8 * MiB, 8.0, 0.0),
        ("room-3/Debrief.mov", 4 * MiB, 0.0, 4.0),
    ]
    threads = []
    for name, size, seconds, delay in plan:

        def job(
            name: str = name, size: int = size, seconds: float = seconds, delay: float = delay
        ) -> None:
            time.sleep(delay)
            write_file(export / name, size, seconds)

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        await asyncio.to_thread(thread.join)
    return [name for name, *_ in plan]


async def _wait_all_done(ledger_path: Path, expected: int) -> None:
    deadline = time.monotonic() + DEMO_TIMEOUT
    while time.monotonic() < deadline:
        if ledger_path.exists():
            ledger = await open_ledger(ledger_path, readonly=True)
            try:
                counts = await ledger.counts()
            finally:
                await ledger.close()
            if counts[State.DONE.value] + counts[State.FAILED.value] >= expected:
                return
        await asyncio.sleep(0.5)
    raise TimeoutError("the demo did not finish in time")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


async def _summary(ledger_path: Path, server: FakeValtThread) -> tuple[str, bool]:
    ledger = await open_ledger(ledger_path, readonly=True)
    try:
        jobs = await ledger.jobs_in(list(State), order="id")
    finally:
        await ledger.close()
    state = server.snapshot()
    held = {r["id"]: r for r in state["records"]}
    rows = [["file", "record id", "size", "seconds", "MB/s", "state", "server copy"]]
    all_good = True
    for job in jobs:
        seconds = (job.uploaded_at or 0) - (job.upload_started_at or 0)
        videos = held.get(job.record_id or "", {}).get("videos") or [{}]
        identical = videos[0].get("sha256") == job.sha256 and job.sha256 is not None
        all_good &= identical and job.state == State.DONE
        rows.append(
            [
                Path(job.path).name,
                (job.record_id or "-")[:13],
                f"{job.size / MiB:.1f} MiB",
                f"{seconds:.2f}",
                f"{job.size / 1e6 / seconds:.1f}" if seconds > 0 else "-",
                job.state.value,
                "identical (sha256)" if identical else "DIFFERS",
            ]
        )
    records_per_file = len(state["records"]) == len(jobs)
    all_good &= records_per_file
    text = _table(rows) + f"\n\n{len(state['records'])} records on the server for {len(jobs)} files"
    return text, all_good


async def _demo(folder: Path) -> int:
    with FakeValtThread(
        faults=Faults(ready_delay=1.0), users={"ingest": PASSWORD}, data_dir=folder / "server"
    ) as server:
        config = parse_config(_config(folder, server.url), folder)
        configure_logging(fmt="console", level="info", stream=sys.stderr)
        print(
            f"fake Valt server at {server.url}; export folder {folder / 'export'}", file=sys.stderr
        )
        daemon = Daemon(config, PASSWORD)
        started = time.monotonic()
        running = asyncio.create_task(daemon.run())
        names = await _play_capture_machine(folder / "export")
        await _wait_all_done(config.ledger.path, len(names))
        daemon.request_stop()
        await running
        text, all_good = await _summary(config.ledger.path, server)
    print()
    print(text)
    print(
        f"all {len(names)} recordings uploaded and confirmed in {time.monotonic() - started:.1f} s"
        if all_good
        else "SOMETHING WENT WRONG: see the table above"
    )
    return 0 if all_good else 1


def command(_args: argparse.Namespace) -> int:
    return run_demo()


def run_demo() -> int:
    folder = Path(tempfile.mkdtemp(prefix="ingestd-demo-"))
    try:
        return asyncio.run(_demo(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
