"""Case 7: ``upload.bandwidth_limit``, constant and scheduled, measured at the server."""

from __future__ import annotations

import datetime
import itertools
import os
import time

from bench.common import MB, Bench, GiB
from bench.procs import Ingestd, Server, wait_for, write_config

CAP = 20 * MB
CAP_WORKERS = 3
MEASURE = 30.0
WARMUP = 3.0
# The schedule: LOW until a minute boundary, HIGH after it (the window's end).
LOW = 4 * MB
HIGH = 12 * MB
MIN_LEAD = 12.0
AFTER = 8.0


def _bytes_at(points: list[tuple[float, int]], moment: float) -> float:
    """Total upload bytes at ``moment``, interpolated between the server's samples."""
    for (t0, b0), (t1, b1) in itertools.pairwise(points):
        if t0 <= moment <= t1:
            return b0 + (b1 - b0) * (moment - t0) / (t1 - t0) if t1 > t0 else float(b1)
    raise ValueError(f"no sample around {moment}")


def _rate(points: list[tuple[float, int]], start: float, end: float) -> float:
    return (_bytes_at(points, end) - _bytes_at(points, start)) / (end - start)


def _drop_files(bench: Bench, export: os.PathLike[str], tags: str, prefix: str) -> list[str]:
    staging = os.path.join(export, ".incoming")
    os.mkdir(staging)
    names = []
    for tag in tags:
        source, _ = bench.data.large_file(f"large-1g-{tag}.ts", GiB)
        name = f"{prefix}-{tag}"
        os.link(source, os.path.join(staging, f"{name}.ts"))
        names.append(name)
    os.rename(staging, os.path.join(export, "batch"))
    return names


def _first_bytes(server: Server) -> float:
    start = server.stats(records=False)["upload_bytes"]
    wait_for(
        lambda: server.stats(records=False)["upload_bytes"] > start, 60, "first uploaded bytes"
    )
    return time.time()


def run_cap(bench: Bench) -> None:
    """A constant 20MB limit with 3 workers: the rate over MEASURE seconds, and the shares."""
    results = bench.results
    server = bench.server
    with bench.workdir("cap") as workdir:
        config = write_config(
            workdir, server.url, workdir / "export",
            upload={"workers": CAP_WORKERS, "bandwidth_limit": "20MB"},
        )  # fmt: skip
        daemon = Ingestd(workdir, config)
        try:
            daemon.wait_ready()
            names = _drop_files(bench, workdir / "export", "bcd", "cap")
            began = _first_bytes(server) + WARMUP
            time.sleep(max(0.0, began - time.time()))
            before = {n: server.stats()["records"].get(n, {}).get("received", 0) for n in names}
            time.sleep(max(0.0, began + MEASURE + 0.3 - time.time()))
            after = {n: server.stats()["records"].get(n, {}).get("received", 0) for n in names}
            points = server.timeline(began - 1)
        finally:
            daemon.stop()
    rate = _rate(points, began, began + MEASURE)
    moved = [after[n] - before[n] for n in names]
    shares = [m / sum(moved) for m in moved]
    error = rate / CAP - 1
    results.raw["cap"] = {"rate_b_s": rate, "shares": shares, "seconds": MEASURE}
    case = "7 bandwidth"
    results.row(case, f"limit 20MB, {CAP_WORKERS} workers: rate over {MEASURE:g} s",
                f"{rate / MB:.2f} MB/s", f"{100 * error:+.1f}%; each worker's share "
                + "/".join(f"{100 * s:.0f}%" for s in shares))  # fmt: skip
    results.target("bandwidth cap within 5%", f"{100 * error:+.1f}%", abs(error) <= 0.05)
    results.target(
        "cap shared by all workers",
        "shares " + "/".join(f"{100 * s:.0f}%" for s in shares),
        min(shares) > 0.5 / CAP_WORKERS,
    )


def run_schedule(bench: Bench) -> None:
    """A schedule whose window ends at a minute boundary: LOW before, HIGH (default) after."""
    results = bench.results
    server = bench.server
    now = datetime.datetime.now()
    start_minute = now.replace(second=0, microsecond=0)
    boundary = start_minute + datetime.timedelta(minutes=1)
    if (boundary - now).total_seconds() < MIN_LEAD + WARMUP:
        boundary += datetime.timedelta(minutes=1)
    window = f"{start_minute:%H:%M}-{boundary:%H:%M}"
    with bench.workdir("schedule") as workdir:
        config = write_config(
            workdir, server.url, workdir / "export",
            upload={"workers": CAP_WORKERS,
                    "bandwidth_limit": {window: "4MB", "default": "12MB"}},
        )  # fmt: skip
        daemon = Ingestd(workdir, config)
        try:
            daemon.wait_ready()
            _drop_files(bench, workdir / "export", "bcd", "schedule")
            began = _first_bytes(server) + 1.0
            switch_at = boundary.timestamp()
            time.sleep(max(0.0, switch_at + AFTER - time.time()))
            points = server.timeline(began - 1)
        finally:
            daemon.stop()
    low = _rate(points, began, switch_at - 0.5)
    high = _rate(points, switch_at + 1.5, switch_at + AFTER - 0.2)
    switched = _switch_time(points, began, switch_at, low, high)
    delay = switched - switch_at
    results.raw["schedule"] = {
        "window": window,
        "low_b_s": low,
        "high_b_s": high,
        "switch_delay_s": delay,
    }
    case = "7 bandwidth"
    results.row(case, f"schedule {window} 4MB, default 12MB: before",
                f"{low / MB:.2f} MB/s", f"{100 * (low / LOW - 1):+.1f}%")  # fmt: skip
    results.row(case, "... after the boundary", f"{high / MB:.2f} MB/s",
                f"{100 * (high / HIGH - 1):+.1f}%; switched {delay:+.2f} s from the "
                "boundary")  # fmt: skip
    ok = abs(low / LOW - 1) <= 0.05 and abs(high / HIGH - 1) <= 0.05 and abs(delay) <= 1.0
    results.target(
        "schedule: both rates within 5%, switch within 1 s",
        f"{100 * (low / LOW - 1):+.1f}% / {100 * (high / HIGH - 1):+.1f}%, {delay:+.2f} s",
        ok,
    )


def _switch_time(
    points: list[tuple[float, int]], began: float, boundary: float, low: float, high: float
) -> float:
    """When the rate changed: the kink of the best two-slope fit to the byte count."""
    near = [(t, b) for t, b in points if boundary - 3 <= t <= boundary + 3]
    best, best_error = boundary, float("inf")
    for kink, kink_bytes in near:
        error = 0.0
        for t, b in near:
            predicted = kink_bytes + (low if t < kink else high) * (t - kink)
            error += (b - predicted) ** 2
        if error < best_error:
            best, best_error = kink, error
    del began
    return best
