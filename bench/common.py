"""What every case shares: the data, the server, fresh run folders, and the result table."""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import DataDir
from bench.procs import Ingestd, Server
from ingestd.observe.heartbeat import process_alive

MB = 1_000_000
MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass
class Row:
    case: str
    metric: str
    value: str
    note: str = ""


@dataclass
class Target:
    name: str
    measured: str
    passed: bool
    why: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, case: str, metric: str, value: str, note: str = "") -> None:
        self.rows.append(Row(case, metric, value, note))
        print(f"  {case:<11} {metric:<44} {value:>22}  {note}", flush=True)

    def target(self, name: str, measured: str, passed: bool, why: str = "") -> None:
        self.targets.append(Target(name, measured, passed, why))
        verdict = "PASS" if passed else "FAIL"
        print(f"  {verdict}  {name}: {measured}", flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], digits: int = 1) -> str:
    """``min-max`` of the rounds, for the note column."""
    return f"rounds {min(values):.{digits}f}-{max(values):.{digits}f}"


class Bench:
    """One bench run: the cached data, one fake server process, and scratch folders."""

    def __init__(self, data: DataDir, results: Results) -> None:
        self.data = data
        self.results = results
        # runs/PID: two benches at once (say make bench and make bench-scale) keep to
        # their own scratch; what a killed run left is removed by the next one.
        for left in (data.root / "runs").glob("*"):
            if not left.name.isdigit() or not process_alive(int(left.name)):
                shutil.rmtree(left, ignore_errors=True)
        self.runs = data.root / "runs" / str(os.getpid())
        self.runs.mkdir(parents=True)
        self._count = 0
        self.server = Server(self.runs / "server")

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.runs, ignore_errors=True)

    @contextmanager
    def workdir(self, name: str) -> Iterator[Path]:
        """A fresh folder (with ``export/``) on the bench's disk, removed afterwards."""
        self._count += 1
        folder = self.runs / f"{self._count:02d}-{name}"
        (folder / "export").mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def fresh_server(self) -> Server:
        """Restart the fake server (a case that must start from empty counters)."""
        self.server.close()
        self.server = Server(self.runs / "server")
        return self.server


def wait_record(
    server: Server, name: str, size: int, timeout: float, ingestd: Ingestd | None = None
) -> dict[str, Any]:
    """Poll the server until record ``name`` holds ``size`` bytes; returns its stats."""
    deadline = time.monotonic() + timeout
    while True:
        if ingestd is not None and ingestd.process.poll() is not None:
            raise RuntimeError(f"ingestd exited early; see {ingestd.log}")
        record: dict[str, Any] | None = server.stats()["records"].get(name)
        if record is not None and record["received"] >= size and record["completed_at"]:
            return record
        if time.monotonic() > deadline:
            raise TimeoutError(f"record {name}: {record} after {timeout:.0f} s")
        time.sleep(0.05)
