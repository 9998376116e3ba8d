"""Processes the bench starts and what it reads about them from /proc."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.server import PASSWORD, USERNAME
from tests.support import wait_for, write_yaml

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss(pid: int) -> int:
    """VmHWM (the highest resident set size so far) of ``pid``, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


class Server:
    """``python -m bench.server`` in its own process (its CPU is not ingestd's).

    ``count_only``: the server does not hash the bytes (``--count-only``); ``cpu``:
    the one core it is pinned to (``taskset``), so that its share of the machine
    does not wander with the load.
    """

    def __init__(self, workdir: Path, *, count_only: bool = False, cpu: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "server.log"
        self.count_only = count_only
        self.pinned_to = cpu
        command = [sys.executable, "-m", "bench.server", "--port", "0"]
        if count_only:
            command.append("--count-only")
        if cpu is not None:
            command = ["taskset", "--cpu-list", str(cpu), *command]
        with open(self.log, "ab") as errors:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=REPO,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("fake-valt listening on "):
            raise RuntimeError(f"the bench server did not start: {line!r} (see {self.log})")
        self.url = line.rpartition(" ")[2]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: object) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def stats(self, records: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_bench/stats" + ("" if records else "?records=0"))
        return result

    def timeline(self, since: float) -> list[tuple[float, int]]:
        return [(float(t), int(b)) for t, b in self.get(f"/_bench/timeline?since={since}")]

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def write_config(workdir: Path, url: str, folder: Path, **sections: dict[str, Any]) -> Path:
    """An ingestd config for one bench run; ``sections`` override the defaults below."""
    config: dict[str, Any] = {
        "valt": {"url": url, "username": USERNAME, "timeout": "30s"},
        # A rescan every 5 s: should a folder event be missed, a file waits seconds, not minutes.
        "watch": {"paths": [str(folder)], "settle": "0.5s", "rescan_interval": "5s"},
        "upload": {"workers": 2},
        "ledger": {"path": str(workdir / "ledger.db"), "backups": 0},
        "log": {"format": "json", "level": "info"},
        "status": {"listen": None},
    }
    return write_yaml(workdir / "config.yaml", config, sections)


class Ingestd:
    """``python -m ingestd run -c CONFIG`` as a real process, at normal priority.

    ``wrapper`` runs it through ``python -m bench.ledger_timing`` instead, which
    adds nothing but timers around the ledger's statements.
    """

    # Experiments (profiling) may point this elsewhere; the bench itself never does.
    module = "ingestd"

    def __init__(self, workdir: Path, config: Path, *, ledger_timing: Path | None = None) -> None:
        self.log = workdir / "ingestd.log"
        env = dict(os.environ)
        env["INGESTD_VALT_PASSWORD"] = PASSWORD
        env.pop("INGESTD_FAILPOINTS", None)
        module = ["-m", self.module]
        if ledger_timing is not None:
            env["BENCH_LEDGER_TIMING"] = str(ledger_timing)
            module = ["-m", "bench.ledger_timing"]
        self.started_at = time.time()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *module, "run", "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        self.pid = self.process.pid
        self._offset = 0
        self._events: list[dict[str, Any]] = []

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        with open(self.log, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            if line.startswith(b"{"):
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    continue
        return self._events

    def wait_event(self, name: str, timeout: float = 60, **fields: object) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"ingestd exited ({self.process.returncode}); see {self.log}")
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        result: dict[str, Any] = wait_for(found, timeout, f"ingestd event {name}")
        return result

    def wait_ready(self, timeout: float = 120) -> float:
        """Wait for the start-up scan, then until ingestd is quiet (its folder watch is set
        up in that start-up burst: a file dropped earlier could go unnoticed until a
        rescan). Returns when it went quiet (``time.time()``)."""
        self.wait_event("watcher.rescan", timeout=timeout, why="startup")
        return self.wait_quiet()

    def wait_quiet(self, window: float = 1.0, share: float = 0.02, timeout: float = 60) -> float:
        """The start of the first ``window`` seconds in which ingestd used at most ``share``
        of one core (sampled every 0.1 s)."""
        samples: collections.deque[tuple[float, float]] = collections.deque()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now, cpu = time.time(), self.cpu()
            samples.append((now, cpu))
            while len(samples) > 1 and samples[1][0] <= now - window:
                samples.popleft()
            first_at, first_cpu = samples[0]
            if now - first_at >= window and cpu - first_cpu <= share * (now - first_at):
                return first_at
            time.sleep(0.1)
        raise TimeoutError(f"ingestd did not go quiet; see {self.log}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return peak_rss(self.pid)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
