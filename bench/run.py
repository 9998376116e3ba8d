"""``make bench``: every case on loopback against the fake Valt server; one table, one JSON.

    python -m bench.run [--only large,memory,small,backlog,latency,bandwidth,shared]

The fake server runs in its own process in discard mode (it checks the chunk
rules, counts and sha256-hashes every byte, stores nothing), so its CPU is not
ingestd's. Cases 1-2 run on servers of their own, pinned to one core: one that
only counts bytes and checks ranges (the rounds), and a hashing one, to show
by curl's rate against each that the counting one is not the limit. ingestd runs as a real process
(``python -m ingestd run``) at normal priority. Comparisons alternate their
sides over several rounds and report medians and ratios: the machine is shared
and noisy, so absolute times are context only.

Data lives in ``$INGESTD_BENCH_DIR`` (default /var/tmp/ingestd-bench), which
must be a real disk: it is written once (about 12 GiB) and reused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from bench import files, large, pace, shared
from bench.common import Bench, Results
from bench.data import NON_DISK_FS, DataDir, default_dir, filesystem_of

CASES = ("large", "memory", "small", "backlog", "latency", "bandwidth", "shared")
RESULTS = Path(__file__).with_name("results.json")


def _preflight(root: Path) -> list[str]:
    notes = []
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit(
            "bench: curl is not installed; case 1 compares against it (apt install curl)"
        )
    notes.append(f"curl: {curl}")
    root.mkdir(parents=True, exist_ok=True)
    mount, fstype = filesystem_of(root)
    if fstype in NON_DISK_FS:
        raise SystemExit(
            f"bench: {root} is on {fstype} ({mount}), not a disk; set INGESTD_BENCH_DIR"
        )
    free = shutil.disk_usage(root).free
    notes.append(f"data: {root} on {fstype} ({mount}), {free / 2**30:.0f} GiB free")
    if free < 14 * 2**30:
        print(f"bench: warning: {free / 2**30:.0f} GiB free; the data needs about 13 GiB")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated of {CASES}")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(wanted) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    started = time.monotonic()
    root = default_dir()
    results = Results()
    results.notes += _preflight(root)
    results.notes.append(
        "server: bench/server.py = ingestd's fake Valt in discard mode (chunk rules checked, "
        "bytes counted and sha256-hashed, nothing stored), its own process"
    )
    results.notes.append(
        f"rounds: case 1-2 {large.ROUNDS} per side, alternating (ABBA); other cases once; "
        "case 1-2 run on a server of their own that only counts bytes and checks ranges, "
        "pinned to one core (taskset), beside a hashing one for reference"
    )
    data = DataDir(root)
    print(f"bench: {os.cpu_count()} cores; {'; '.join(results.notes)}", flush=True)
    bench = Bench(data, results)
    try:
        for case in wanted:
            case_started = time.monotonic()
            print(f"bench: case {case}", flush=True)
            _run_case(bench, case)
            results.raw.setdefault("case_seconds", {})[case] = time.monotonic() - case_started
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    results.raw["data_written_gib"] = data.written / 2**30
    _report(results, elapsed, args.json)
    return 1 if args.strict and not all(t.passed for t in results.targets) else 0


def _run_case(bench: Bench, case: str) -> None:
    if case == "large":
        large.run_large(bench)
    elif case == "memory":
        large.run_memory(bench)
    elif case == "small":
        files.run_small_files(bench)
    elif case == "backlog":
        files.run_backlog(bench)
    elif case == "latency":
        files.run_latency(bench)
    elif case == "bandwidth":
        pace.run_cap(bench)
        pace.run_schedule(bench)
    elif case == "shared":
        shared.run_shared(bench)


def table(results: Results, elapsed: float) -> str:
    """The run as a Markdown table: measurements, then one PASS/FAIL line per target."""
    lines = [
        f"ingestd bench, {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, `make bench` took {elapsed / 60:.1f} min",
        "",
        "| case | measure | value | notes |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r.case} | {r.metric} | {r.value} | {r.note} |" for r in results.rows]
    lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
    lines += [
        f"| {t.name} | {t.measured} | {'PASS' if t.passed else '**FAIL**'} |"
        for t in results.targets
    ]
    lines += [""] + [f"- {note}" for note in results.notes]
    return "\n".join(lines)


def _report(results: Results, elapsed: float, target: Path) -> None:
    text = table(results, elapsed)
    print("\n" + text, flush=True)
    payload = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": elapsed,
        "rows": [r.__dict__ for r in results.rows],
        "targets": [t.__dict__ for t in results.targets],
        "notes": results.notes,
        "raw": results.raw,
        "table": text,
    }
    target.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\nbench: wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
