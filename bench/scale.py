"""``make bench-scale``: does memory grow with the number of files that pass through?

    python -m bench.scale [--files 200000] [--batch 2000] [--only memory|ledger]
                          [--ledger-files 100000,1000000] [--json build/scale.json]

In one process, through the real intake (scan, settle, finished checks,
fingerprints, queueing) and the real SQLite ledger: files arrive a batch at
a time, are found and queued, are marked uploaded (done, as the confirmer
leaves them), and are moved away, as ``after_upload.action: move`` does. A
new token is registered for scrubbing with every batch, as a re-login every
8 hours would over months. The resident set size after the first batch is
compared with the one after the last (both after a garbage collection): the
target is within 10 %, whatever the number of files.

The second case (``bench/million.py``) restarts a real daemon on a ledger of
100,000 and of 1,000,000 done files: start to idle, peak RSS, one rescan, and
``ingestd status`` and ``/metrics``.

The server is left out on purpose: its part of memory does not depend on how
many files have passed (the daemon's other benches measure it). A few of the
files are fragmented MP4s, which the container check cannot judge: each is
logged once and must not be remembered for ever.
"""

from __future__ import annotations

import _sqlite3
import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import million
from bench.data import DataDir, default_dir
from ingestd.config.load import load_config
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.watcher import Intake
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger
from ingestd.logs import configure_logging, register_secret

TARGET_GROWTH = 0.10
FILE_BYTES = 1024
# ftyp + moof + mdat: adds up, but fragmented, so the container check cannot judge it.
FRAGMENTED = b"\x00\x00\x00\x10ftypisom\x00\x00\x00\x00" + b"\x00\x00\x00\x08moof"
MDAT_BYTES = 16


def _sqlite_memory_used() -> Callable[[], int]:
    """SQLite's own heap (its page caches above all), from the library Python loaded."""
    function = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    function.restype = ctypes.c_int64
    return lambda: int(function())


sqlite_bytes = _sqlite_memory_used()


def rss_bytes() -> int:
    """The current resident set size (VmRSS) of this process."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _config(folder: Path) -> Path:
    path = folder / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "valt": {"url": "http://127.0.0.1:9", "username": "ingest", "password": "unused"},
                "watch": {"paths": [str(folder / "export")], "settle": 0, "recursive": True},
                "record": {"sidecar": False},
                "ledger": {"path": str(folder / "ledger.db"), "backups": 0},
                "status": {"listen": None},
            }
        )
    )
    return path


def _write_batch(export: Path, batch: int, count: int) -> None:
    folder = export / f"day-{batch:04d}"
    folder.mkdir()
    for index in range(count):
        if index % 100 == 0:
            mdat = (8 + MDAT_BYTES).to_bytes(4, "big") + b"mdat" + os.urandom(MDAT_BYTES)
            (folder / f"frag-{index:05d}.mp4").write_bytes(FRAGMENTED + mdat)
        else:
            (folder / f"clip-{index:05d}.ts").write_bytes(os.urandom(FILE_BYTES))


async def _through(intake: Intake, ledger: SqliteLedger, export: Path, moved: Path) -> int:
    """Find, queue, "upload" and move away everything in ``export``; returns the count."""
    await intake.scan("bench")
    await intake.settle()  # settle is 0: one pass judges and queues every file
    queued = await ledger.jobs_in([State.QUEUED])
    # Done as a server would have made them, straight in the ledger: the uploads are not
    # what this measures.
    now = time.time()
    rows = [
        ("0" * 64, f"record-{job.id}", now, str(moved / f"{job.id}.ts"), job.id) for job in queued
    ]
    with contextlib.closing(sqlite3.connect(ledger.path, timeout=10)) as conn, conn:
        conn.executemany(
            "UPDATE jobs SET state='done', sha256=?, record_id=?, done_at=?, after_done=1, "
            "final_path=? WHERE id=?",
            rows,
        )
    for folder in list(export.iterdir()):
        shutil.rmtree(folder)  # moved away (the copies are not kept: disk, not memory)
    await intake.scan("bench")
    return len(queued)


async def measure(files: int, batch: int, workdir: Path) -> dict[str, Any]:
    export, moved = workdir / "export", workdir / "moved"
    export.mkdir()
    moved.mkdir()
    config = load_config(_config(workdir))
    ledger = await SqliteLedger.open(config.ledger.path)
    logged: list[str] = []
    checks = FinishedChecks(
        check_open_writers=True,
        check_container=True,
        done_marker=None,
        log=lambda event, _fields: logged.append(event),
    )
    intake = Intake(
        watch=config.watch,
        sidecars=config.record.sidecar,
        ledger=ledger,
        checks=checks,
        is_active=lambda _job: False,
        on_ready=lambda: None,
    )
    samples: list[tuple[int, int, int]] = []
    passed = 0
    started = time.monotonic()
    try:
        for number in range((files + batch - 1) // batch):
            _write_batch(export, number, min(batch, files - passed))
            register_secret(secrets.token_hex(16), token=True)  # a re-login's fresh token
            done = await _through(intake, ledger, export, moved)
            if done != min(batch, files - passed):
                raise RuntimeError(f"batch {number}: {done} files went through, not {batch}")
            passed += done
            gc.collect()
            samples.append((passed, rss_bytes(), sqlite_bytes()))
            if number % 10 == 0:
                print(
                    f"  {passed:>7} files  RSS {samples[-1][1] / 2**20:6.1f} MiB"
                    f"  (SQLite's heap {samples[-1][2] / 2**20:4.1f} MiB)",
                    flush=True,
                )
    finally:
        await ledger.close()
    (_n, first, first_sqlite), (_m, last, last_sqlite) = samples[0], samples[-1]
    return {
        "files": passed,
        "batch": batch,
        "seconds": round(time.monotonic() - started, 1),
        "rss_first_batch": first,
        "rss_last_batch": last,
        "growth": last / first - 1,
        "sqlite_heap_first_batch": first_sqlite,
        "sqlite_heap_last_batch": last_sqlite,
        # What grew besides SQLite's page cache (bounded by its cache_size, not by files).
        "growth_besides_sqlite": (last - last_sqlite) / (first - first_sqlite) - 1,
        "container_unknown_logged": logged.count("file.container_unknown"),
        "samples": samples,
    }


def run_memory(files: int, batch: int) -> tuple[dict[str, Any], bool]:
    """The memory case (the module docstring); returns its figures and whether it passed."""
    workdir = Path(tempfile.mkdtemp(prefix="ingestd-scale-", dir=os.environ.get("TMPDIR")))
    try:
        result = asyncio.run(measure(files, batch, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    passed = abs(result["growth"]) <= TARGET_GROWTH
    print(
        f"{'PASS' if passed else 'FAIL'}  RSS after {result['batch']:,} files "
        f"{result['rss_first_batch'] / 2**20:.1f} MiB, after {result['files']:,} "
        f"{result['rss_last_batch'] / 2**20:.1f} MiB ({100 * result['growth']:+.1f} %, "
        f"target within {100 * TARGET_GROWTH:.0f} %); SQLite's heap "
        f"{result['sqlite_heap_first_batch'] / 2**20:.1f} -> "
        f"{result['sqlite_heap_last_batch'] / 2**20:.1f} MiB, the rest "
        f"{100 * result['growth_besides_sqlite']:+.1f} %; {result['seconds']} s; "
        f"file.container_unknown logged {result['container_unknown_logged']} times",
        flush=True,
    )
    return result, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument(
        "--only", choices=("memory", "ledger"), default=None, help="run one case of the two"
    )
    parser.add_argument(
        "--ledger-files",
        default=",".join(str(n) for n in million.COUNTS),
        help="the ledger case's sizes, comma-separated (the largest is judged)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    configure_logging(fmt="json", level="warning")
    results: dict[str, Any] = {}
    passed = True
    if args.only in (None, "memory"):
        print(f"memory as {args.files:,} files pass through intake and the ledger", flush=True)
        results["memory"], passed = run_memory(args.files, args.batch)
    if args.only in (None, "ledger"):
        counts = tuple(int(n) for n in args.ledger_files.split(","))
        print("a daemon restarted on a ledger of N done files (bench/million.py)", flush=True)
        results["ledger"] = million.run(DataDir(default_dir()), counts)
        passed = passed and results["ledger"]["passed"]
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
