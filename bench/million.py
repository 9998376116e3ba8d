"""``make bench-scale``, the ledger case: a daemon restarted on a ledger of N done files.

For each N (100,000 and 1,000,000 by default) the files (a few bytes each, 1,000 a
folder) and a ledger holding every one as a finished upload are written once under
``$INGESTD_BENCH_DIR`` (bench/data.py) and reused; each run starts from a copy of the
ledger, opened once beforehand by this ingestd (so what it adds at open, an index say, is
there as after any earlier start), and with every file stat'ed once (``_warm``). Then,
against the fake server in its own process:

- ``python -m ingestd run`` (a real process, the default ledger settings: backups on,
  ``status.listen`` on a free port, ``rescan_interval`` long) from exec to idle. Idle:
  the start-up scan has logged ``watcher.rescan`` and ``/healthz`` answers 200;
- its peak RSS (``VmHWM``) over the whole run, the start-up and the rescan below;
- the first periodic rescan of the unchanged files: ingestd's CPU seconds across it
  (``/proc/PID/stat`` sampled every 0.1 s, less what the daemon spends while quiet, at
  the rate measured just before it), the requests the server saw meanwhile (its own
  counters), and the ledger writes it made (jobs stamped ``updated_at`` during it; the
  heartbeat writes only ``meta``);
- ``ingestd status --json``, exec to exit, median of 5, and ``GET /metrics``, median of 5,
  while the daemon runs.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import resource
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.data import DataDir, copy_ledger
from bench.procs import REPO, Ingestd, Server, write_config

COUNTS = (100_000, 1_000_000)
RESCAN_INTERVAL = 40.0  # the first periodic rescan comes this long after the start-up one
REPEATS = 5
METRICS_APART = 1.3  # seconds between two GET /metrics, as a scraper's are apart
MiB = 1024 * 1024
# The targets, of the largest N.
IDLE_TARGET = 10.0
RSS_TARGET = 150 * MiB
RSS_GROWTH = 0.10
RESCAN_CPU_TARGET = 4.0
STATUS_TARGET = 0.200
METRICS_TARGET = 0.200


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _event_time(event: dict[str, Any]) -> float:
    stamp = str(event["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def _open_once(ledger: Path) -> float:
    """Open and close the ledger with this ingestd (what a start adds at open is then
    there); returns how long it took."""
    from ingestd.ledger.store import SqliteLedger

    async def open_close() -> None:
        opened = await SqliteLedger.open(ledger)
        await opened.close()

    started = time.monotonic()
    asyncio.run(open_close())
    return time.monotonic() - started


def _warm(folder: Path) -> None:
    """Stat every file once, so the tree's metadata is in memory as on a machine that is
    up: the case times ingestd, not the disk. (A start after a boot reads the inodes from
    the disk first; the kernel may also drop them from memory after a while unused, which
    made a start to idle 13.0 s here instead of 8.4 s.)"""
    for top, _folders, files in os.walk(folder):
        for name in files:
            os.stat(os.path.join(top, name))


def _jobs_written(ledger: Path, since: float) -> tuple[int, int]:
    """(jobs in the ledger, jobs stamped ``updated_at`` at or after ``since``)."""
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(updated_at >= ?), 0) FROM jobs", (since,)
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _status_seconds(config: Path) -> tuple[list[float], list[float]]:
    """``ingestd status --json``, exec to exit, :data:`REPEATS` times: (wall, CPU) seconds."""
    times, cpu = [], []
    for _ in range(REPEATS):
        cpu_before = _children_cpu()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "ingestd", "status", "--json", "-c", str(config)],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        times.append(time.perf_counter() - started)
        cpu.append(_children_cpu() - cpu_before)
        if done.returncode != 0:
            raise RuntimeError(f"ingestd status exited {done.returncode}: {done.stderr[-500:]!r}")
        json.loads(done.stdout)
    return times, cpu


def _metrics_seconds(url: str, daemon: Ingestd) -> tuple[list[float], float]:
    """``GET /metrics`` :data:`REPEATS` times: the wall seconds of each, and the daemon's
    CPU seconds per request (``/proc`` counts in ticks: the mean over all of them)."""
    times = []
    cpu = 0.0
    for _ in range(REPEATS):
        time.sleep(METRICS_APART)  # a heartbeat (every 5 s) falls between some of them
        cpu_before = daemon.cpu()
        started = time.perf_counter()
        status, _body = _get(url + "/metrics")
        times.append(time.perf_counter() - started)
        cpu += daemon.cpu() - cpu_before
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
    return times, cpu / REPEATS


def _rescan_cpu(
    samples: list[tuple[float, float]], idle_at: float, start: float, end: float
) -> tuple[float, float]:
    """ingestd's CPU seconds across the rescan [start, end], less its quiet rate (measured
    from idle to just before the rescan); returns (rescan CPU, quiet share of a core)."""
    quiet = [s for s in samples if idle_at + 1 <= s[0] <= start - 0.5]
    rate = 0.0
    if len(quiet) >= 2 and quiet[-1][0] > quiet[0][0]:
        rate = (quiet[-1][1] - quiet[0][1]) / (quiet[-1][0] - quiet[0][0])
    before = max((s for s in samples if s[0] <= start), default=samples[0])
    after = min((s for s in samples if s[0] >= end), default=samples[-1])
    spent = after[1] - before[1] - rate * (after[0] - before[0])
    return max(0.0, spent), rate


def measure(data: DataDir, count: int, scratch: Path) -> dict[str, Any]:
    """One daemon on a copy of the N-file ledger; the figures of the module docstring."""
    folder, prebuilt = data.done_files(count)
    opened_s = _open_once(prebuilt)
    workdir = scratch / f"ledger-{count}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    ledger = workdir / "ledger.db"
    copy_ledger(prebuilt, ledger)
    _warm(folder)
    server = Server(workdir / "server")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(
        workdir, server.url, folder,
        watch={"rescan_interval": f"{RESCAN_INTERVAL:g}s", "settle": "10s"},
        ledger={"path": str(ledger), "backups": 7},  # the default: a backup at start
        status={"listen": f"127.0.0.1:{port}"},
    )  # fmt: skip
    requests_at_start = server.stats(records=False)["requests"]
    daemon = Ingestd(workdir, config)
    try:
        startup = daemon.wait_event("watcher.rescan", timeout=600, why="startup")
        status, _body = _get(base + "/healthz")
        idle_at = max(time.time(), _event_time(startup))
        if status != 200:
            raise RuntimeError(f"/healthz answered {status} after the start-up scan")
        to_idle = idle_at - daemon.started_at
        cpu_to_idle = daemon.cpu()
        requests_before = server.stats(records=False)["requests"]
        samples: list[tuple[float, float]] = []
        rescan: dict[str, Any] | None = None
        settle_until = 0.0
        deadline = time.monotonic() + RESCAN_INTERVAL + 600
        while time.monotonic() < deadline:
            samples.append((time.time(), daemon.cpu()))
            if rescan is None:
                found = [e for e in daemon.events() if e.get("event") == "watcher.rescan"]
                periodic = [e for e in found if e.get("why") == "interval"]
                if periodic:
                    rescan = periodic[0]
                    settle_until = time.time() + 1.0
            elif time.time() >= settle_until:
                break
            time.sleep(0.1)
        if rescan is None:
            raise RuntimeError(f"no periodic rescan; see {daemon.log}")
        end = _event_time(rescan)
        start = end - float(rescan["seconds"])
        cpu, quiet = _rescan_cpu(samples, idle_at, start, end)
        requests = server.stats(records=False)["requests"] - requests_before
        jobs, written = _jobs_written(ledger, start)
        status_s, status_cpu = _status_seconds(config)
        metrics_s, metrics_cpu = _metrics_seconds(base, daemon)
        load = os.getloadavg()[0]
        rss = daemon.peak_rss()
        backups = [e for e in daemon.events() if e.get("event") == "ledger.backup"]
    finally:
        daemon.stop()
        server.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "files": count,
        "first_open_s": opened_s,
        "to_idle_s": to_idle,
        "cpu_to_idle_s": cpu_to_idle,
        "startup_scan_s": float(startup["seconds"]),
        "requests_to_idle": requests_before - requests_at_start,
        "peak_rss": rss,
        "rescan_cpu_s": cpu,
        "rescan_wall_s": float(rescan["seconds"]),
        "quiet_cpu_share": quiet,
        "rescan_requests": requests,
        "rescan_ledger_writes": written,
        "jobs": jobs,
        "status_s": status_s,
        "status_median_s": statistics.median(status_s),
        "status_cpu_s": status_cpu,
        "metrics_s": metrics_s,
        "metrics_median_s": statistics.median(metrics_s),
        "metrics_cpu_s": metrics_cpu,
        "load_average": load,
        "backup_at_start": bool(backups),
    }


def targets(figures: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the table: the largest N is judged; the others are context."""
    largest = max(figures)
    big = figures[largest]
    small = figures[min(figures)]
    growth = big["peak_rss"] / small["peak_rss"] - 1
    rows = [
        ("start to idle", "to_idle_s", "{:.1f} s", f"<= {IDLE_TARGET:g} s",
         big["to_idle_s"] <= IDLE_TARGET),
        ("peak RSS", "peak_rss", "{:.0f} MiB",
         f"<= {RSS_TARGET / MiB:.0f} MiB, within {100 * RSS_GROWTH:.0f} % of "
         f"{min(figures):,} ({100 * growth:+.1f} %)",
         big["peak_rss"] <= RSS_TARGET and abs(growth) <= RSS_GROWTH),
        ("one rescan, CPU", "rescan_cpu_s", "{:.2f} s", f"<= {RESCAN_CPU_TARGET:g} CPU s",
         big["rescan_cpu_s"] <= RESCAN_CPU_TARGET),
        ("... its requests", "rescan_requests", "{:.0f}", "0", big["rescan_requests"] == 0),
        ("... its ledger writes", "rescan_ledger_writes", "{:.0f}", "0",
         big["rescan_ledger_writes"] == 0),
        ("status --json, median of 5", "status_median_s", "{:.3f} s",
         f"<= {1000 * STATUS_TARGET:.0f} ms", big["status_median_s"] <= STATUS_TARGET),
        ("GET /metrics, median of 5", "metrics_median_s", "{:.3f} s",
         f"<= {1000 * METRICS_TARGET:.0f} ms", big["metrics_median_s"] <= METRICS_TARGET),
    ]  # fmt: skip
    table = []
    for name, key, shape, target, passed in rows:
        scale = MiB if key == "peak_rss" else 1
        values = {n: shape.format(figures[n][key] / scale) for n in sorted(figures)}
        table.append(
            {"row": name, "key": key, "values": values, "target": target, "passed": passed}
        )
    return table


def print_table(figures: dict[int, dict[str, Any]], table: list[dict[str, Any]]) -> None:
    counts = sorted(figures)
    header = f"  {'ledger of N done files':<28}" + "".join(f"{n:>12,}" for n in counts)
    print(header + f"  {'target (largest N)':<44} verdict")
    for row in table:
        values = "".join(f"{row['values'][n]:>12}" for n in counts)
        verdict = "PASS" if row["passed"] else "FAIL"
        print(f"  {row['row']:<28}{values}  {row['target']:<44} {verdict}")
    for n in counts:
        f = figures[n]
        status_runs = ", ".join(f"{s:.3f}" for s in f["status_s"])
        print(
            f"  N={n:,}: {f['cpu_to_idle_s']:.1f} CPU s from exec to idle, start-up scan "
            f"{f['startup_scan_s']:.2f} s, rescan wall "
            f"{f['rescan_wall_s']:.2f} s, quiet CPU {100 * f['quiet_cpu_share']:.1f} % of a "
            f"core, {f['requests_to_idle']} requests from exec to idle, backup at start: "
            f"{f['backup_at_start']}, first open by this ingestd {f['first_open_s']:.1f} s\n"
            f"    status --json: {status_runs} s wall, CPU median "
            f"{statistics.median(f['status_cpu_s']):.3f} s; /metrics: "
            f"{1000 * f['metrics_cpu_s']:.0f} ms of the daemon's CPU each; load average "
            f"{f['load_average']:.1f} on {os.cpu_count()} cores (wall figures under load)",
            flush=True,
        )


def run(data: DataDir, counts: tuple[int, ...] = COUNTS) -> dict[str, Any]:
    """Every N in turn; returns the figures and the table (also printed)."""
    scratch = data.root / f"scale-runs-{os.getpid()}"
    figures: dict[int, dict[str, Any]] = {}
    try:
        for count in counts:
            print(f"  ledger of {count:,} done files ...", flush=True)
            figures[count] = measure(data, count, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = targets(figures)
    print_table(figures, table)
    return {
        "cores": os.cpu_count(),
        "figures": {str(n): f for n, f in figures.items()},
        "table": table,
        "passed": all(row["passed"] for row in table),
    }
