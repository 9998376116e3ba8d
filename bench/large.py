"""Cases 1-3: one large file against curl + openssl (throughput, CPU), and peak memory."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from bench import baseline
from bench.common import MB, Bench, GiB, MiB, median, spread, wait_record
from bench.procs import Ingestd, Server, write_config

CHUNK = 8 * MiB
LARGE = 2 * GiB
ROUNDS = 6
REFERENCE_ROUNDS = 2


def ingestd_upload(
    bench: Bench, source: Path, name: str, *, workers: int = 2, server: Server | None = None
) -> dict[str, Any]:
    """ingestd uploads ``source`` (dropped into its folder as ``name``); timings, CPU, RSS,
    and the sha256 ingestd computed (as its ledger keeps it)."""
    server = server or bench.server
    size = source.stat().st_size
    with bench.workdir(name) as workdir:
        config = write_config(
            workdir, server.url, workdir / "export",
            upload={"workers": workers, "chunk_size": f"{CHUNK // MiB}MiB"},
        )  # fmt: skip
        daemon = Ingestd(workdir, config)
        try:
            daemon.wait_ready()
            cpu_before = daemon.cpu()
            os.link(source, workdir / "export" / f"{name}{source.suffix}")
            record = wait_record(server, name, size, 600, daemon)
            daemon.wait_event("job.done", timeout=60)
            cpu = daemon.cpu() - cpu_before
            rss = daemon.peak_rss()
        finally:
            daemon.stop()
        with contextlib.closing(sqlite3.connect(workdir / "ledger.db")) as ledger:
            [(sha256,)] = ledger.execute("SELECT sha256 FROM jobs").fetchall()
    return {"record": record, "cpu_s": cpu, "peak_rss": rss, "sha256": sha256}


def _rate(record: dict[str, Any], size: int) -> float:
    seconds = float(record["completed_at"]) - float(record["first_request_at"])
    return size / MB / seconds


def _server_core() -> int | None:
    """The core the servers of case 1 are pinned to: the last one, given two or more."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if len(cores) >= 2 and shutil.which("taskset") else None


def run_large(bench: Bench) -> None:
    """Cases 1 and 2: ingestd against curl + openssl, ROUNDS rounds each (ABBA order),
    on a server that only counts bytes; curl alone against both kinds of server."""
    source, digest = bench.data.large_file("large-2g.ts", LARGE)
    core = _server_core()
    counting = Server(bench.runs / "server-count", count_only=True, cpu=core)
    hashing = Server(bench.runs / "server-hash", cpu=core)
    try:
        startup = baseline.startup_costs(bench, counting)
        reference = _reference(bench, source, counting, hashing)
        ours, pairs = _rounds(bench, source, digest, counting)
        checked = ingestd_upload(bench, source, "ingestd-2g-hashed", server=hashing)
        if checked["record"]["sha256"] != digest:
            raise RuntimeError("ingestd-2g-hashed: the server holds other bytes than the file")
        reference["ingestd_hashing"] = [_rate(checked["record"], LARGE)]
    finally:
        counting.close()
        hashing.close()
    _report(bench, ours, pairs, reference, startup, core)


def _reference(
    bench: Bench, source: Path, counting: Server, hashing: Server
) -> dict[str, list[float]]:
    """curl alone against the counting and the hashing server, alternating: the first
    must be clearly faster, or the bench's server is the limit."""
    rates: dict[str, list[float]] = {"curl_counting": [], "curl_hashing": []}
    for number in range(REFERENCE_ROUNDS):
        order = [("curl_counting", counting), ("curl_hashing", hashing)]
        for key, server in order if number % 2 == 0 else order[::-1]:
            sent = baseline.send(bench, server, source, f"{key}-r{number}", CHUNK, digest=None)
            rates[key].append(LARGE / MB / sent["seconds"])
            print(f"    reference {key}: {rates[key][-1]:.0f} MB/s", flush=True)
    return rates


def _rounds(
    bench: Bench, source: Path, digest: str, server: Server
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ours: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    for number in range(ROUNDS):
        order = ("ingestd", "pair") if number % 2 == 0 else ("pair", "ingestd")
        for side in order:
            name = f"{side}-2g-r{number}"
            server_before = server.cpu()
            if side == "ingestd":
                run = ingestd_upload(bench, source, name, server=server)
                if run["sha256"] != digest:
                    raise RuntimeError(f"{name}: ingestd's sha256 is not the file's")
                ours.append(run)
                rate = _rate(run["record"], LARGE)
            else:
                run = baseline.send(bench, server, source, name, CHUNK, digest=digest)
                pairs.append(run)
                rate = LARGE / MB / run["seconds"]
            run["server_cpu_s"] = server.cpu() - server_before
            if run["record"]["received"] != LARGE:
                raise RuntimeError(f"{name}: the server holds {run['record']['received']} bytes")
            print(f"    round {number + 1} {side}: {rate:.0f} MB/s", flush=True)
    return ours, pairs


def _report(
    bench: Bench,
    ours: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    reference: dict[str, list[float]],
    startup: dict[str, float],
    core: int | None,
) -> None:
    results = bench.results
    gib = LARGE / GiB
    our_rates = [_rate(r["record"], LARGE) for r in ours]
    pair_rates = [LARGE / MB / r["seconds"] for r in pairs]
    curl_in_pair = [LARGE / MB / r["curl_seconds"] for r in pairs]
    openssl_in_pair = [LARGE / MB / r["openssl_seconds"] for r in pairs]
    ratios = [a / b for a, b in zip(our_rates, pair_rates, strict=True)]
    our_cpu = [r["cpu_s"] / gib for r in ours]
    curl_cpu = [(r["curl_cpu_s"] - startup["curl"]) / gib for r in pairs]
    openssl_cpu = [(r["openssl_cpu_s"] - startup["openssl"]) / gib for r in pairs]
    pair_cpu = [a + b for a, b in zip(curl_cpu, openssl_cpu, strict=True)]
    cpu_ratios = [a / b for a, b in zip(our_cpu, pair_cpu, strict=True)]
    server_cpu = [r["server_cpu_s"] / gib for r in ours + pairs]
    expect = sum(r["expect_headers"] for r in pairs)
    connections = max(r["connections"] for r in pairs)
    pinned = f"server pinned to core {core}" if core is not None else "server not pinned"
    results.raw["large"] = {
        "ingestd_mb_s": our_rates,
        "pair_mb_s": pair_rates,
        "curl_in_pair_mb_s": curl_in_pair,
        "openssl_in_pair_mb_s": openssl_in_pair,
        "ratios": ratios,
        "reference_mb_s": reference,
        "ingestd_cpu_s_per_gib": our_cpu,
        "curl_cpu_s_per_gib": curl_cpu,
        "openssl_cpu_s_per_gib": openssl_cpu,
        "cpu_ratios": cpu_ratios,
        "startup_cpu_s": startup,
        "server_cpu_s_per_gib": server_cpu,
        "server_core": core,
        "curl_expect_headers": expect,
        "curl_connections": connections,
    }
    case = "1 large"
    results.row(case, "ingestd MB/s (2 GiB, 8 MiB chunks)", f"{median(our_rates):.0f}",
                spread(our_rates, 0) + f"; counting server, {pinned}")  # fmt: skip
    results.row(case, "curl + openssl started together, MB/s", f"{median(pair_rates):.0f}",
                spread(pair_rates, 0) + f"; curl {median(curl_in_pair):.0f}, openssl "
                f"{median(openssl_in_pair):.0f} of them; Expect headers: {expect}; "
                f"connections: {connections}")  # fmt: skip
    results.row(case, "ratio ingestd / (curl + openssl)", f"{median(ratios):.2f}",
                spread(ratios, 2))  # fmt: skip
    for key, label in (("curl_counting", "curl alone, counting server"),
                       ("curl_hashing", "curl alone, hashing server"),
                       ("ingestd_hashing", "ingestd, hashing server")):  # fmt: skip
        values = reference[key]
        results.row(case, f"{label}, MB/s", f"{median(values):.0f}",
                    spread(values, 0) if len(values) > 1 else "bytes' sha256 checked")  # fmt: skip
    case = "2 cpu"
    results.row(case, "ingestd CPU s/GiB", f"{median(our_cpu):.2f}", spread(our_cpu, 2))
    results.row(case, "curl + openssl CPU s/GiB", f"{median(pair_cpu):.2f}",
                spread(pair_cpu, 2) + f"; curl {median(curl_cpu):.2f} + openssl "
                f"{median(openssl_cpu):.2f}; start-up excluded: {startup['curl']:.3f} + "
                f"{startup['openssl']:.3f} s (a one-byte file)")  # fmt: skip
    results.row(case, "ratio ingestd / (curl + openssl)", f"{median(cpu_ratios):.2f}",
                spread(cpu_ratios, 2))  # fmt: skip
    results.row(case, "counting server CPU s/GiB (either side)", f"{median(server_cpu):.2f}",
                "chunk rules checked, bytes counted, no sha256")  # fmt: skip
    worst = min(ratios)
    results.target(
        "throughput >= 0.97 x curl + openssl, no round < 0.85",
        f"{median(ratios):.2f} x (lowest round {worst:.2f})",
        median(ratios) >= 0.97 and worst >= 0.85,
    )
    results.target(
        "CPU/GiB <= 1.00 x curl + openssl (start-up excluded)",
        f"{median(cpu_ratios):.2f} x",
        median(cpu_ratios) <= 1.00,
    )
    if expect:
        raise RuntimeError(f"curl sent {expect} Expect headers")


def run_memory(bench: Bench) -> None:
    """Case 3: peak RSS (VmHWM) for 1 GiB and 4 GiB, and 4 workers on 4 files at once."""
    results = bench.results
    one, _ = bench.data.large_file("large-1g-a.ts", GiB)
    four, _ = bench.data.large_file("large-4g.ts", 4 * GiB)
    small = ingestd_upload(bench, one, "mem-1g")
    big = ingestd_upload(bench, four, "mem-4g")
    parallel = _four_at_once(bench)
    case = "3 memory"
    for label, value in (("1 GiB file", small), ("4 GiB file", big)):
        results.row(case, f"peak RSS, {label}", f"{value['peak_rss'] / MiB:.1f} MiB",
                    f"{_rate(value['record'], value['record']['received']):.0f} MB/s")  # fmt: skip
    results.row(case, "peak RSS, 4 workers x 4 files of 1 GiB", f"{parallel / MiB:.1f} MiB")
    peaks = [small["peak_rss"], big["peak_rss"], parallel]
    growth = big["peak_rss"] / small["peak_rss"] - 1
    results.raw["memory"] = {"peak_rss": peaks, "growth_1g_to_4g": growth}
    results.target(
        "peak RSS < 120 MiB in every case",
        f"max {max(peaks) / MiB:.1f} MiB",
        max(peaks) < 120 * MiB,
    )
    results.target(
        "peak RSS 1 GiB vs 4 GiB within 10%", f"{100 * growth:+.1f}%", abs(growth) <= 0.10
    )


def _four_at_once(bench: Bench) -> int:
    server = bench.server
    sources = [bench.data.large_file(f"large-1g-{tag}.ts", GiB)[0] for tag in "abcd"]
    with bench.workdir("mem-4x1g") as workdir:
        staging = workdir / "export" / ".incoming"
        staging.mkdir()
        config = write_config(
            workdir, server.url, workdir / "export",
            upload={"workers": 4, "chunk_size": f"{CHUNK // MiB}MiB"},
        )  # fmt: skip
        daemon = Ingestd(workdir, config)
        try:
            daemon.wait_ready()
            names = [f"mem-4x-{source.stem}" for source in sources]
            for source, name in zip(sources, names, strict=True):
                os.link(source, staging / f"{name}.ts")
            staging.rename(workdir / "export" / "batch")  # all four appear at once
            for name in names:
                wait_record(server, name, GiB, 600, daemon)
            rss = daemon.peak_rss()
        finally:
            daemon.stop()
    return rss
