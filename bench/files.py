"""Cases 4-6: many small files, a backlog of 100,000 done files, and latency."""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import Bench, MiB, median
from bench.data import copy_ledger
from bench.procs import Ingestd, wait_for, write_config

SMALL_COUNT = 5000
SMALL_SIZE = 256 * 1024
SMALL_SETTLE = 1.0
BACKLOG_COUNT = 100_000
BACKLOG_RESCAN = 60.0
DEFAULT_RESCAN = 300.0
LATENCY_SETTLE = 2.0
LATENCY_SAMPLES = 5


def _ledger_count(ledger: Path, state: str) -> int:
    if not ledger.exists():
        return 0
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()
        return int(row[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _last_done(ledger: Path) -> float:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        return float(conn.execute("SELECT MAX(done_at) FROM jobs").fetchone()[0])
    finally:
        conn.close()


def _event_time(event: dict[str, Any]) -> float:
    stamp = str(event["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


def run_small_files(bench: Bench) -> None:
    """Case 4: SMALL_COUNT files of 256 KiB appear at once (a folder renamed in), 4 workers."""
    results = bench.results
    source = bench.data.small_files(SMALL_COUNT, SMALL_SIZE)
    with bench.workdir("small") as workdir:
        staging = workdir / "export" / ".incoming"  # ".*" is excluded: unseen until renamed
        staging.mkdir()
        for entry in os.scandir(source):
            os.link(entry.path, staging / entry.name)
        config = write_config(
            workdir, bench.server.url, workdir / "export",
            watch={"settle": f"{SMALL_SETTLE}s"}, upload={"workers": 4},
        )  # fmt: skip
        timing = workdir / "ledger-timing.json"
        ledger = workdir / "ledger.db"
        daemon = Ingestd(workdir, config, ledger_timing=timing)
        try:
            daemon.wait_ready()
            cpu_before, server_before = daemon.cpu(), bench.server.cpu()
            dropped = time.time()
            staging.rename(workdir / "export" / "batch")
            wait_for(
                lambda: _ledger_count(ledger, "done") >= SMALL_COUNT
                or daemon.process.poll() is not None,
                600, "all small files done", interval=0.5,
            )  # fmt: skip
            finished = _last_done(ledger)
            cpu = daemon.cpu() - cpu_before
            server_cpu = bench.server.cpu() - server_before
        finally:
            daemon.stop()
        calls = json.loads(timing.read_text()) if timing.exists() else []
    window = [c for c in calls if dropped <= c[0] <= finished]
    busy = sum(c[1] for c in window)
    commits = sum(c[2] for c in window)
    seconds = finished - dropped
    rate = SMALL_COUNT / seconds
    share = busy / seconds
    results.raw["small_files"] = {
        "files": SMALL_COUNT, "seconds": seconds, "files_per_s": rate, "ledger_busy_s": busy,
        "ledger_calls": len(window), "commits": commits, "cpu_s": cpu, "settle_s": SMALL_SETTLE,
        "server_cpu_s": server_cpu,
    }  # fmt: skip
    case = "4 small"
    results.row(case, f"{SMALL_COUNT} x 256 KiB, 4 workers: files/s end to end",
                f"{rate:.0f}", f"{seconds:.1f} s from drop to the last done; settle "
                f"{SMALL_SETTLE:g} s")  # fmt: skip
    results.row(case, "ledger busy share of that time", f"{100 * share:.0f}%",
                f"{busy:.1f} s in SQLite incl. fsync; {commits / SMALL_COUNT:.1f} commits "
                f"and {len(window) / SMALL_COUNT:.0f} calls per file")  # fmt: skip
    server_ms = 1000 * server_cpu / SMALL_COUNT
    results.row(case, "ingestd CPU per file", f"{1000 * cpu / SMALL_COUNT:.1f} ms",
                f"fake server: {server_ms:.1f} ms per file (3 requests)")  # fmt: skip
    results.target(">= 250 small files/s end to end", f"{rate:.0f}/s", rate >= 250)
    per_file = cpu / SMALL_COUNT
    results.target(
        "<= 4 ms ingestd CPU per small file", f"{1000 * per_file:.1f} ms", per_file <= 0.004
    )


def _interval_rescans(daemon: Ingestd) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()
        if e.get("event") == "watcher.rescan" and e.get("why") == "interval"
    ]


def run_backlog(bench: Bench) -> None:
    """Case 5: BACKLOG_COUNT files the ledger holds as done; start, idle, two rescans."""
    results = bench.results
    folder, prebuilt = bench.data.backlog(BACKLOG_COUNT)
    server = bench.server
    with bench.workdir("backlog") as workdir:
        copy_ledger(prebuilt, workdir / "ledger.db")
        config = write_config(
            workdir, server.url, folder,
            # The defaults (settle 10s), but a rescan every minute: two fit the budget.
            watch={"rescan_interval": f"{BACKLOG_RESCAN:g}s", "settle": "10s"},
        )  # fmt: skip
        requests_before = server.stats(records=False)["requests"]
        daemon = Ingestd(workdir, config)
        try:
            idle_at = daemon.wait_ready()
            to_idle = idle_at - daemon.started_at
            cpu0, wall0 = daemon.cpu(), time.time()
            # Quiet time before the first periodic rescan: the idle cost without rescans.
            time.sleep(max(0.0, idle_at + BACKLOG_RESCAN - 3 - time.time()))
            quiet = (daemon.cpu() - cpu0) / (time.time() - wall0)
            wait_for(
                lambda: len(_interval_rescans(daemon)) >= 2,
                3 * BACKLOG_RESCAN + 30, "two periodic rescans", interval=0.2,
            )  # fmt: skip
            # The window holds whole intervals: two rescans and the quiet time between.
            time.sleep(max(0.0, wall0 + 2 * BACKLOG_RESCAN - time.time()))
            cpu1, wall1 = daemon.cpu(), time.time()
            rescan_events = _interval_rescans(daemon)
            rss = daemon.peak_rss()
        finally:
            daemon.stop()
    requests = server.stats(records=False)["requests"] - requests_before
    window = wall1 - wall0
    idle_share = (cpu1 - cpu0) / window
    rescans = len(rescan_events)
    per_rescan = max(0.0, (cpu1 - cpu0) - quiet * window) / max(1, rescans)
    at_default = quiet + per_rescan / DEFAULT_RESCAN
    scan_seconds = [float(e.get("seconds", 0)) for e in rescan_events]
    results.raw["backlog"] = {
        "files": BACKLOG_COUNT, "to_idle_s": to_idle, "requests": requests,
        "idle_cpu_share": idle_share, "window_s": window, "rescans": rescans,
        "rescan_interval_s": BACKLOG_RESCAN, "rescan_wall_s": scan_seconds,
        "cpu_per_rescan_s": per_rescan, "quiet_cpu_share": quiet,
        "share_at_default_interval": at_default, "peak_rss": rss,
    }  # fmt: skip
    case = "5 backlog"
    results.row(case, f"{BACKLOG_COUNT:,} done files: start to idle", f"{to_idle:.1f} s",
                "ledger on disk; idle = the first 1 s using <= 2% CPU after the "
                "start-up scan")  # fmt: skip
    results.row(case, "HTTP requests made", f"{requests}")
    results.row(case, "CPU while idle, one core", f"{100 * idle_share:.2f}%",
                f"{window:.0f} s holding {rescans} rescans (rescan_interval "
                f"{BACKLOG_RESCAN:g} s)")  # fmt: skip
    results.row(case, "... CPU per rescan of 100,000 files", f"{per_rescan:.2f} s",
                f"wall {median(scan_seconds):.2f} s; between rescans "
                f"{100 * quiet:.2f}%; at the default 5 min interval "
                f"{100 * at_default:.2f}%")  # fmt: skip
    results.row(case, "peak RSS", f"{rss / MiB:.0f} MiB")
    results.target("backlog idle within 5 s", f"{to_idle:.1f} s", to_idle <= 5.0)
    results.target("backlog: 0 requests", f"{requests}", requests == 0)
    results.target(
        f"backlog: < 2% of one core while idle (rescan every {BACKLOG_RESCAN:g} s)",
        f"{100 * idle_share:.2f}%",
        idle_share < 0.02,
    )


def run_latency(bench: Bench) -> None:
    """Case 6: a writer closes a file; when does its first chunk reach the server?"""
    results = bench.results
    server = bench.server
    latencies: list[float] = []
    with bench.workdir("latency") as workdir:
        config = write_config(
            workdir, server.url, workdir / "export", watch={"settle": f"{LATENCY_SETTLE:g}s"}
        )
        daemon = Ingestd(workdir, config)
        try:
            daemon.wait_ready()
            pool = bench.data.pool
            for number in range(LATENCY_SAMPLES):
                name = f"latency-{number}"
                with open(workdir / "export" / f"{name}.ts", "wb") as handle:
                    for block in range(8):  # a recording written over ~0.4 s
                        handle.write(pool.block(name, block))
                        handle.flush()
                        time.sleep(0.05)
                closed = time.time()

                def first_chunk(name: str = name) -> float | None:
                    record = server.stats()["records"].get(name)
                    return None if record is None else record["first_request_at"]

                arrived = wait_for(first_chunk, 60, f"first chunk of {name}")
                latencies.append(arrived - closed)
                time.sleep(0.5)
        finally:
            daemon.stop()
    worst = max(latencies)
    limit = LATENCY_SETTLE + 1.0
    results.raw["latency"] = {"seconds": latencies, "settle_s": LATENCY_SETTLE}
    results.row("6 latency", "close -> first chunk at the server",
                f"median {median(latencies):.2f} s", f"max {worst:.2f} s of "
                f"{LATENCY_SAMPLES}; settle {LATENCY_SETTLE:g} s")  # fmt: skip
    results.target(f"latency <= settle + 1 s ({limit:g} s)", f"max {worst:.2f} s", worst <= limit)
