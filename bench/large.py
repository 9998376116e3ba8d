"""Cases 1-3: one large file against curl (throughput, CPU), and peak memory."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import MB, Bench, GiB, MiB, median, spread, wait_record
from bench.procs import Ingestd, Server, write_config
from bench.server import PASSWORD, USERNAME
from ingestd.valt import rules as valt_rules
from ingestd.valt.multipart import multipart_frame, new_boundary

CHUNK = 8 * MiB
LARGE = 2 * GiB
ROUNDS = 3


def _login(server: Server) -> str:
    answer = server.post("/api/v3/login", {"username": USERNAME, "password": PASSWORD})
    return str(answer["data"]["access_token"])


def _curl_bodies(bench: Bench, source: Path, filename: str) -> tuple[str, list[Path]]:
    """One multipart body per chunk, framed exactly as ingestd frames it; cached on disk."""
    folder = bench.data.root / f"curl-bodies-{source.name}-{CHUNK}"
    boundary_file = folder / "boundary"
    size = source.stat().st_size
    count = (size + CHUNK - 1) // CHUNK
    paths = [folder / f"{index:05d}.body" for index in range(count)]
    if boundary_file.exists() and all(p.exists() for p in paths):
        return boundary_file.read_text(), paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    boundary = new_boundary()
    head, tail = multipart_frame(boundary, filename)
    with open(source, "rb") as handle:
        for path in paths:
            with open(path, "wb") as body:
                body.write(head + handle.read(CHUNK) + tail)
    os.sync()
    boundary_file.write_text(boundary)
    return boundary, paths


def curl_upload(bench: Bench, source: Path, name: str) -> dict[str, Any]:
    """One curl process sends every chunk on one connection; returns its timings and CPU."""
    server = bench.server
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed")
    boundary, bodies = _curl_bodies(bench, source, source.name)
    token = _login(server)
    created = server.post(f"/api/v3/records/create-upload?access_token={token}", {"name": name})
    record_id, video_id = created["id"], created["videos"][0]
    url = f"{server.url}/api/v3/records/{record_id}/videos/{video_id}?access_token={token}"
    size = source.stat().st_size
    args = [curl, "-sS", "--http1.1"]
    for index, body in enumerate(bodies):
        start = index * CHUNK
        end = min(size, start + CHUNK)
        if index:
            args.append("--next")
        args += [
            "-X", "POST", "-T", str(body), "-o", "/dev/null", "-w", "%{http_code}\\n",
            "-H", "Expect:",
            "-H", f"Content-Type: multipart/form-data; boundary={boundary}",
            "-H", f"Content-Range: {valt_rules.content_range(start, end, size)}",
            url,
        ]  # fmt: skip
    before = server.stats(records=False)
    out_path = bench.runs / f"{name}.curl-out"
    with open(out_path, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    output = out_path.read_text(errors="replace")
    codes = output.split()
    if process.returncode != 0 or any(code != "200" for code in codes):
        raise RuntimeError(f"curl failed ({process.returncode}): {output[:300]}")
    record = wait_record(server, name, size, 30)
    after = server.stats(records=False)
    return {
        "record": record,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "expect_headers": after["expect_headers"] - before["expect_headers"],
        "connections": after["upload_connections"] - before["upload_connections"],
        "requests": len(codes),
    }


def ingestd_upload(bench: Bench, source: Path, name: str, *, workers: int = 2) -> dict[str, Any]:
    """ingestd uploads ``source`` (dropped into its folder as ``name``); timings, CPU, RSS."""
    server = bench.server
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
    return {"record": record, "cpu_s": cpu, "peak_rss": rss}


def _rate(record: dict[str, Any], size: int) -> float:
    seconds = float(record["completed_at"]) - float(record["first_request_at"])
    return size / MB / seconds


def run_large(bench: Bench, sha256_bytes_per_s: float) -> None:
    """Cases 1 and 2: ingestd and curl alternate, ROUNDS rounds each (ABBA order)."""
    results = bench.results
    source, digest = bench.data.large_file("large-2g.ts", LARGE)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for number in range(ROUNDS):
        order = ("ingestd", "curl") if number % 2 == 0 else ("curl", "ingestd")
        for side in order:
            name = f"{side}-2g-r{number}"
            server_before = bench.server.cpu()
            if side == "ingestd":
                ours.append(ingestd_upload(bench, source, name))
                record = ours[-1]["record"]
            else:
                theirs.append(curl_upload(bench, source, name))
                record = theirs[-1]["record"]
            (ours if side == "ingestd" else theirs)[-1]["server_cpu_s"] = (
                bench.server.cpu() - server_before
            )
            if record["sha256"] != digest:
                raise RuntimeError(f"{name}: the server holds other bytes than the file")
            print(f"    round {number + 1} {side}: {_rate(record, LARGE):.0f} MB/s", flush=True)
    our_rates = [_rate(r["record"], LARGE) for r in ours]
    their_rates = [_rate(r["record"], LARGE) for r in theirs]
    ratios = [a / b for a, b in zip(our_rates, their_rates, strict=True)]
    gib = LARGE / GiB
    our_cpu = [r["cpu_s"] / gib for r in ours]
    their_cpu = [r["cpu_s"] / gib for r in theirs]
    cpu_ratios = [a / b for a, b in zip(our_cpu, their_cpu, strict=True)]
    hash_cpu = GiB / sha256_bytes_per_s
    server_cpu = [r["server_cpu_s"] / gib for r in ours + theirs]
    hash_share = hash_cpu / median(our_cpu)
    expect = sum(r["expect_headers"] for r in theirs)
    connections = max(r["connections"] for r in theirs)
    results.raw["large"] = {
        "ingestd_mb_s": our_rates,
        "curl_mb_s": their_rates,
        "ingestd_cpu_s_per_gib": our_cpu,
        "curl_cpu_s_per_gib": their_cpu,
        "sha256_cpu_s_per_gib": hash_cpu,
        "ratio_without_sha256": (median(our_cpu) - hash_cpu) / median(their_cpu),
        "server_cpu_s_per_gib": server_cpu,
        "curl_expect_headers": expect,
        "curl_connections": connections,
    }
    case = "1 large"
    results.row(case, "ingestd MB/s (2 GiB, 8 MiB chunks)", f"{median(our_rates):.0f}",
                spread(our_rates, 0))  # fmt: skip
    results.row(case, "curl MB/s (same requests, one connection)", f"{median(their_rates):.0f}",
                spread(their_rates, 0) + f"; Expect headers sent: {expect}; "
                f"connections: {connections}")  # fmt: skip
    results.row(case, "ratio ingestd/curl", f"{median(ratios):.2f}", spread(ratios, 2))
    case = "2 cpu"
    results.row(case, "ingestd CPU s/GiB", f"{median(our_cpu):.2f}", spread(our_cpu, 2))
    results.row(case, "curl CPU s/GiB", f"{median(their_cpu):.2f}", spread(their_cpu, 2))
    results.row(case, "ratio ingestd/curl", f"{median(cpu_ratios):.2f}", spread(cpu_ratios, 2))
    results.row(case, "sha256 share of ingestd CPU", f"{100 * hash_share:.0f}%",
                f"sha256 here: {hash_cpu:.2f} CPU s/GiB")  # fmt: skip
    unhashed = (median(our_cpu) - hash_cpu) / median(their_cpu)
    results.row(case, "ratio without sha256 (ingestd - sha256)/curl", f"{unhashed:.2f}",
                f"sha256 alone is {hash_cpu / median(their_cpu):.2f} x curl's CPU")  # fmt: skip
    results.row(case, "fake server CPU s/GiB (either side)", f"{median(server_cpu):.2f}",
                "discard mode: sha256 of every byte, multipart read in place")  # fmt: skip
    results.target("throughput >= 0.9 x curl", f"{median(ratios):.2f} x", median(ratios) >= 0.9)
    results.target(
        "CPU/GiB <= 2.0 x curl (hashing included)",
        f"{median(cpu_ratios):.2f} x",
        median(cpu_ratios) <= 2.0,
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


def sha256_speed() -> float:
    """Bytes per CPU second of sha256 here, in 256 KiB pieces (median of 3)."""
    piece = os.urandom(256 * 1024)
    speeds = []
    for _ in range(3):
        digest = hashlib.sha256()
        started = time.process_time()
        for _ in range(1024):  # 256 MiB
            digest.update(piece)
        speeds.append(256 * MiB / (time.process_time() - started))
    return median(speeds)
