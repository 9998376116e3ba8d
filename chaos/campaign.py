"""The crash and fault campaign: kill the daemon again and again against a faulty server.

A fake Valt server (in this process) answers a few percent of requests with
500 or 502 HTML pages, drops connections mid-chunk, answers slower than the
client's idle timeout or not at all, expires tokens every few dozen requests
and reports ``ready`` late. A seeded mix of files (a few bytes to tens of
MiB, some written slowly while the daemon runs, some appended to while their
upload is under way, between two runs) is uploaded by ``ingestd run`` (daemon
mode, ``after_upload.action: move``), which is killed with SIGKILL over and
over: at every named failpoint (design.md, "Failpoints") deterministically,
through ``INGESTD_FAILPOINTS``, and at random moments in between, with a new
``upload.chunk_size`` drawn at every start. A last run without kills lets
every file finish; then the server's records, the ledger and the moved files
are checked against the sources.

Then the file-system part (``chaos_fs.py``): the disk changes under a daemon
run as nobody, in one phase per after-upload action; its rows count private
bytes uploaded, never-uploaded files deleted or moved, and daemon or loop
stops.

    .venv/bin/python -m chaos.campaign                 # the long form (make chaos)
    .venv/bin/python -m chaos.campaign --short         # the short form (as in make test)
    .venv/bin/python -m chaos.campaign --seed 1234     # replay a run's plan

The seed fixes the files, the plan of kills, every failpoint count, every
random delay, the chunk sizes and the server's fault dice. Timing still
differs between two runs (which request a fault lands on depends on the
interleaving), so a replay repeats the plan, not every byte of the story.

Exit 0 only if every invariant holds; the table says which one did not.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chaos.chaos_fs import FsOptions, FsReport, run_fs_campaign
from chaos.chaos_ledger import ledger_state, newest_jobs, sha256_file
from ingestd.failpoints import ENV_VAR, FAILPOINTS
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.units import format_size, parse_size

KiB = 1024
MiB = 1024 * KiB
USERNAME = "ingest"
PASSWORD = "chaos-Pass-w0rd-42"
CLIENT_TIMEOUT = 2.0
"""``valt.timeout``: slow (3 s) and hung answers are longer than this."""

FAULTS: dict[str, Any] = {
    "fail_rate": 0.03,  # 500, every other one an HTML page
    "bad_gateway_rate": 0.01,  # nginx's 502 page
    "drop_rate": 0.03,  # uploads: the connection is cut mid-body
    "slow_rate": 0.01,  # slower than valt.timeout: the client gives up, then the fake drops it
    "slow_seconds": 3.0,
    "hang_rate": 0.003,  # never answered
    "token_ttl": 40,  # tokens expire after 40 uses
    "ready_delay": 1.0,  # "ready" comes a second after the last byte
    "not_json_rate": 0.02,  # create-upload / get-record took effect, the answer is "OK" text
}
CHUNK_SIZES = (0, 64 * KiB, 128 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
"""``upload.chunk_size`` of a run, drawn anew at every start (0: the whole file at once)."""
EXTENSIONS = (".mp4", ".mov", ".MP4", ".mkv", ".ts")
FOLDERS = ("", "", "room-1", "room-2", "room-2/day 2")
LIVE = ("waiting", "queued", "creating", "uploading", "confirming")
MAX_CHANGES = 2
"""Times one file may be appended to while its upload is under way."""


@dataclass
class Options:
    """What one campaign does; the defaults are the long form (``make chaos``)."""

    seed: int
    files: int = 100
    kills_per_failpoint: int = 5
    random_kills: int = 220
    minutes: float = 14.0
    max_size: int = 40 * MiB
    slow_files: float = 0.15
    """Fraction of files written slowly while the daemon runs."""
    failpoint_timeout: float = 12.0
    """Seconds an armed run may take to reach its failpoint before it is killed anyway."""
    random_delay: tuple[float, float] = (0.3, 3.0)
    final_timeout: float = 240.0
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = True
    fs: FsOptions | None = None
    """The file-system part (``chaos_fs``); None: its long form. Off with ``--no-fs``."""
    run_fs: bool = True

    def __post_init__(self) -> None:
        if self.fs is None:
            self.fs = FsOptions(seed=self.seed)

    @classmethod
    def short(cls, seed: int) -> Options:
        """The short form inside ``make test``: each failpoint once, a few random kills."""
        return cls(
            seed=seed,
            files=8,
            kills_per_failpoint=1,
            random_kills=3,
            minutes=1.5,
            max_size=1 * MiB,
            slow_files=0.25,
            failpoint_timeout=8.0,
            random_delay=(0.8, 2.0),
            final_timeout=60.0,
            fs=FsOptions.short(seed),
        )


@dataclass
class FileSpec:
    """One source file: where it goes, what it holds, when it appears."""

    index: int
    relpath: str
    size: int
    slow: bool
    appear_run: int
    sha256: str = ""
    changes: int = 0
    started: bool = False
    """Being written or written."""
    written: bool = False
    """Complete and closed: the campaign may change it."""

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem


@dataclass
class RunRecord:
    """One start of the daemon and how it ended."""

    number: int
    kind: str  # a failpoint name, "random" or "final"
    count: int | None
    chunk_size: int
    outcome: str  # "hit", "missed", "killed", "clean", or what went wrong
    seconds: float


@dataclass
class Report:
    """The campaign's result: the table's numbers and the invariants that failed."""

    seed: int
    options: dict[str, Any]
    started: str
    cores: int
    files: int = 0
    file_bytes: int = 0
    smallest: int = 0
    largest: int = 0
    slow_files: int = 0
    changed_files: int = 0
    chunk_sizes: list[int] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)
    random_kills: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    records: int = 0
    records_per_file: dict[str, int] = field(default_factory=dict)
    partial_or_orphan: int = 0
    two_at_once: int = 0
    deleted_records: int = 0
    bytes_differ: int = 0
    not_done: int = 0
    moved_ok: int = 0
    upload_bytes: int = 0
    internal_errors: int = 0
    seconds: float = 0.0
    runs: list[RunRecord] = field(default_factory=list)
    fs: FsReport | None = None
    problems: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def overhead(self) -> float:
        return self.upload_bytes / self.file_bytes if self.file_bytes else 0.0

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["overhead"] = round(self.overhead, 4)
        return data

    def table(self) -> str:
        """The result as a Markdown table (also what the README shows)."""
        per_file = Counter(self.records_per_file.values())
        spread = ", ".join(f"{n} record(s): {c} file(s)" for n, c in sorted(per_file.items()))
        kills = sum(self.kills.values()) + sum(self.missed.values()) + self.random_kills
        rows = [
            ("seed", str(self.seed)),
            ("date, cores", f"{self.started}, {self.cores} cores"),
            ("duration", f"{self.seconds / 60:.1f} min"),
            (
                "files",
                f"{self.files} ({format_size(self.file_bytes)}; {format_size(self.smallest)} to "
                f"{format_size(self.largest)}; {self.slow_files} written slowly, "
                f"{self.changed_files} changed mid-upload)",
            ),
            ("chunk sizes", ", ".join(chunk_label(c) for c in self.chunk_sizes)),
            ("kills, total", f"{kills} ({len(self.runs)} daemon starts)"),
        ]
        for name in FAILPOINTS:
            missed = self.missed.get(name, 0)
            extra = f" (+{missed} armed, not reached: killed from outside)" if missed else ""
            rows.append((f"kills at `{name}`", f"{self.kills.get(name, 0)}{extra}"))
        rows += [
            ("kills at random moments", str(self.random_kills)),
            (
                "faults injected",
                ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none",
            ),
            ("records on the server", str(self.records)),
            ("records per file (must be exactly 1)", spread or "-"),
            ("partial or orphan records left (must be 0)", str(self.partial_or_orphan)),
            ("partial records deleted on the way", str(self.deleted_records)),
            ("files that had two records at one moment (must be 0)", str(self.two_at_once)),
            ("files whose server bytes differ (must be 0)", str(self.bytes_differ)),
            ("files not done (must be 0)", str(self.not_done)),
            ("moved files equal to the server's bytes", f"{self.moved_ok} of {self.files}"),
            (
                "bytes sent / bytes of the files",
                f"{format_size(self.upload_bytes)} / {format_size(self.file_bytes)} = "
                f"{self.overhead:.3f} (resend overhead {100 * (self.overhead - 1):.1f} %)",
            ),
            ("internal errors logged (must be 0)", str(self.internal_errors)),
            *(fs_rows(self.fs) if self.fs is not None else []),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'':<{width}} | |", f"| {'-' * width} | --- |"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        if self.problems:
            lines.append("")
            lines += [f"problem: {p}" for p in self.problems[:40]]
            if len(self.problems) > 40:
                lines.append(f"... and {len(self.problems) - 40} more")
        return "\n".join(lines)


def fs_rows(fs: FsReport) -> list[tuple[str, str]]:
    """The file-system part's rows: what was done, and its three must-be-0 counts."""
    kinds: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for label, count in fs.actions.items():
        kind, state = label.split("@")
        kinds[kind] += count
        states[state] += count
    done = sum(fs.actions.values())
    shown = sum(fs.private_shown.values())
    return [
        (
            "file-system actions (daemon as nobody; keep + keep_for, move, delete)",
            f"{done}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        ),
        ("file-system actions by job state", ", ".join(f"{k} {v}" for k, v in states.items())),
        (
            "file-system actions given up (no file reached the state in time)",
            f"{sum(fs.missed.values())}"
            + (f" ({', '.join(sorted(fs.missed))})" if fs.missed else ""),
        ),
        (
            "symlink/FIFO/folder swaps left in place, never done (must be all)",
            f"{fs.replacements_ok} of {fs.replacements}",
        ),
        ("regular files whose last version was never uploaded (must be 0)", str(fs.stale_files)),
        (
            "private bytes uploaded (must be 0)",
            f"{fs.private_bytes}"
            + (f" (+ {shown} copies in logs, ledger or metadata)" if shown else ""),
        ),
        (
            "never-uploaded files deleted or moved (must be 0)",
            f"{fs.lost + fs.moved_unuploaded} ({fs.lost} deleted, "
            f"{fs.moved_unuploaded} moved to move_to)",
        ),
        (
            "daemon or loop stops (must be 0)",
            f"{fs.stops} ({fs.daemon_exits} exits, {fs.canaries_missed} canaries not uploaded)",
        ),
    ]


def chunk_label(size: int) -> str:
    return format_size(size) if size else "whole file"


# --- the files -------------------------------------------------------------------------------


def _content(seed: int, index: int, version: int, size: int) -> Iterator[bytes]:
    rng = random.Random(f"{seed}:{index}:{version}")
    left = size
    while left:
        block = rng.randbytes(min(left, MiB))
        left -= len(block)
        yield block


def _size(rng: random.Random, max_size: int) -> int:
    """A few bytes to ``max_size``: log-uniform within four bands."""
    roll = rng.random()
    if roll < 0.2:
        low, high = 3, 200
    elif roll < 0.5:
        low, high = 200, 512 * KiB
    elif roll < 0.85:
        low, high = 512 * KiB, 6 * MiB
    else:
        low, high = 6 * MiB, max_size
    high = max(4, min(high, max_size))
    low = min(low, high - 1)
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def plan_files(options: Options, rng: random.Random, runs: int) -> list[FileSpec]:
    """The seeded mix: a backlog at the start, the rest appearing while kills go on."""
    specs = []
    backlog = max(2, options.files // 5)
    spread_over = max(1, int(runs * 0.8))
    for index in range(options.files):
        slow = index >= backlog and rng.random() < options.slow_files
        size = _size(rng, min(options.max_size, 8 * MiB) if slow else options.max_size)
        if index < backlog:
            appear = 0
        else:
            appear = 1 + (index - backlog) * spread_over // max(1, options.files - backlog)
        folder = rng.choice(FOLDERS)
        name = f"c{options.seed % 100000:05d}-{index:03d}{'-slow' if slow else ''}"
        relpath = str(Path(folder) / (name + rng.choice(EXTENSIONS)))
        specs.append(FileSpec(index, relpath, size, slow, appear))
    return specs


def write_file(spec: FileSpec, root: Path, seed: int, pace: Callable[[], None] | None) -> None:
    """Write the file's first version; ``pace`` sleeps between pieces (a slow writer)."""
    path = root / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    pieces = 8 if pace else 1
    piece = max(1, math.ceil(spec.size / pieces))
    with open(path, "wb") as handle:
        buffer = b"".join(_content(seed, spec.index, 0, spec.size))
        for start in range(0, spec.size, piece):
            data = buffer[start : start + piece]
            handle.write(data)
            handle.flush()
            digest.update(data)
            if pace:
                pace()
    spec.sha256 = digest.hexdigest()
    spec.written = True


def append_to(spec: FileSpec, root: Path, seed: int, rng: random.Random) -> None:
    """Change the file the way a capture program that reopens it would: more bytes at the end."""
    spec.changes += 1
    extra = b"".join(_content(seed, spec.index, spec.changes, rng.randint(1, 64 * KiB)))
    path = root / spec.relpath
    with open(path, "ab") as handle:
        handle.write(extra)
    spec.size += len(extra)
    spec.sha256 = sha256_file(path)


class SlowWriter:
    """A thread that writes files in pieces, holding them open, while the daemon runs."""

    def __init__(self, root: Path, seed: int, rng: random.Random) -> None:
        self.root = root
        self.seed = seed
        self.rng = rng
        self.tasks: queue.Queue[FileSpec | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="slow-writer", daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    def add(self, spec: FileSpec) -> None:
        self.tasks.put(spec)

    def wait_idle(self) -> None:
        self.tasks.join()

    def close(self) -> None:
        self.tasks.put(None)
        self.thread.join(60)

    def _run(self) -> None:
        while (spec := self.tasks.get()) is not None:
            try:
                pace = functools.partial(time.sleep, self.rng.uniform(0.1, 0.35))
                write_file(spec, self.root, self.seed, pace)
            except BaseException as exc:  # reported by the campaign
                self.error = exc
            finally:
                self.tasks.task_done()
        self.tasks.task_done()


class ServerEvents:
    """Every record created or deleted on the fake server, in order (from its own thread).

    The daemon must delete a partial record before it makes another for the same
    file: at no moment may one file have two records.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # ("create" | "delete", record id, name)

    def install(self, server: FakeValtThread) -> None:
        def wire(fake: Any) -> None:
            store = fake.state.store
            create, delete = store.create, store.delete

            def logged_create(name: str, **kwargs: Any) -> Any:
                record = create(name, **kwargs)
                self.events.append(("create", record.id, name))
                return record

            def logged_delete(record_id: str) -> bool:
                record = store.records.get(record_id)
                existed = bool(delete(record_id))
                if record is not None and existed:
                    self.events.append(("delete", record_id, record.name))
                return existed

            setattr(store, "create", logged_create)  # noqa: B010 - patching the instance
            setattr(store, "delete", logged_delete)  # noqa: B010

        server.call(wire)

    def overlaps(self) -> dict[str, int]:
        """Name -> the most records it had at one moment, where that was more than one."""
        live: dict[str, set[str]] = {}
        worst: dict[str, int] = {}
        for kind, record_id, name in list(self.events):
            held = live.setdefault(name, set())
            if kind == "create":
                held.add(record_id)
            else:
                held.discard(record_id)
            if len(held) > 1:
                worst[name] = max(worst.get(name, 0), len(held))
        return worst


# --- the campaign ------------------------------------------------------------------------------


class Campaign:
    """Everything one campaign holds: the server, the files, the plan, the daemon."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.started_at = time.monotonic()
        self.deadline = self.started_at + options.minutes * 60
        self.report = Report(
            seed=options.seed,
            options={
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(options).items()
            },
            started=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            cores=os.cpu_count() or 1,
            kills={name: 0 for name in FAILPOINTS},
            missed={name: 0 for name in FAILPOINTS},
        )
        total_runs = len(FAILPOINTS) * options.kills_per_failpoint + options.random_kills
        self.specs = plan_files(options, self.rng, total_runs)
        # Kinds of run in a seeded order; a failpoint that cannot be reached now waits.
        self.plan = [name for name in FAILPOINTS for _ in range(options.kills_per_failpoint)]
        self.plan += ["random"] * options.random_kills
        self.rng.shuffle(self.plan)
        self.run_number = 0
        self.chunk_sizes_used: set[int] = set()
        self.events = ServerEvents()

    # --- set-up ---------------------------------------------------------------------

    def setup(self, work: Path) -> None:
        self.work = work
        self.export = work / "export"
        self.moved = work / "moved"
        self.ledger = work / "ledger.db"
        self.log = work / "daemon.log"
        self.export.mkdir(parents=True)
        self.moved.mkdir()
        self.writer = SlowWriter(self.export, self.options.seed, random.Random(self.rng.random()))

    def config_for(self, chunk_size: int) -> Path:
        path = self.work / f"config-{chunk_size}.yaml"
        if not path.exists():
            config = {
                "valt": {"url": self.server.url, "username": USERNAME, "timeout": CLIENT_TIMEOUT},
                "watch": {
                    "paths": [str(self.export)],
                    "settle": "0.5s",
                    "rescan_interval": "2s",
                    "check_container": False,  # the files are random bytes
                },
                "upload": {
                    "workers": 2,
                    "chunk_size": chunk_size,
                    "backoff_initial": "0.05s",
                    "backoff_max": "1s",
                },
                "after_upload": {"action": "move", "move_to": str(self.moved)},
                "ledger": {"path": str(self.ledger)},
                "log": {"format": "json", "level": "info"},
                "status": {"listen": None},
            }
            path.write_text(yaml.safe_dump(config))
        return path

    def say(self, text: str) -> None:
        if self.options.verbose:
            print(text, flush=True)

    # --- running the daemon ---------------------------------------------------------

    def start_daemon(
        self, kind: str, count: int | None, chunk_size: int
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["INGESTD_VALT_PASSWORD"] = PASSWORD
        env.pop(ENV_VAR, None)
        if count is not None:
            env[ENV_VAR] = f"{kind}:{count}"
        with open(self.log, "ab") as handle:
            handle.write(
                f"=== run {self.run_number}: {kind}:{count} chunk_size={chunk_size}\n".encode()
            )
            handle.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "ingestd", "run", "-c", str(self.config_for(chunk_size))],
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.work,
            )

    def one_run(
        self, kind: str, count: int | None, delay: float | None, chunk_size: int
    ) -> RunRecord:
        self.run_number += 1
        self.chunk_sizes_used.add(chunk_size)
        started = time.monotonic()
        process = self.start_daemon(kind, count, chunk_size)
        try:
            if count is not None:
                code = _wait(process, self.options.failpoint_timeout)
                if code is None:
                    outcome = "missed"
                elif code == -signal.SIGKILL:
                    outcome = "hit"
                else:
                    outcome = f"exited with {code}"
            else:
                assert delay is not None
                code = _wait(process, delay)
                outcome = "killed" if code is None else f"exited with {code}"
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)
        record = RunRecord(
            self.run_number, kind, count, chunk_size, outcome, time.monotonic() - started
        )
        self.report.runs.append(record)
        if outcome.startswith("exited"):
            self.report.problems.append(
                f"run {record.number} ({kind}:{count}): the daemon {outcome} (see {self.log})"
            )
        return record

    # --- choosing the next kill -------------------------------------------------------

    def appear(self) -> None:
        """Write the files due by this run: at once, or slowly while the daemon runs."""
        for spec in self.specs:
            if spec.started or spec.appear_run > self.run_number + 1:
                continue
            spec.started = True
            if spec.slow:
                self.writer.add(spec)
            else:
                write_file(spec, self.export, self.options.seed, None)

    def bring_forward(self) -> None:
        """Nothing left to do: let the next file appear now (an extra one after the last)."""
        later = [s for s in self.specs if s.appear_run > self.run_number + 1]
        if later:
            later[0].appear_run = self.run_number + 1
            return
        index = len(self.specs)
        name = f"c{self.options.seed % 100000:05d}-{index:03d}-extra.mp4"
        size = _size(self.rng, min(self.options.max_size, 8 * MiB))
        spec = FileSpec(index, name, size, False, self.run_number + 1)
        self.specs.append(spec)

    def feasible(
        self, point: str, rows: list[dict[str, Any]], pending: int, chunk_size: int
    ) -> int:
        """How far ``point`` can be counted in the next run (0: it will not be passed)."""
        known = newest_jobs(rows)
        live = [r for r in known.values() if r["state"] in LIVE]
        coming = [s for s in self.specs if s.started and str(self.export / s.relpath) not in known]
        before_record: int = sum(r["state"] in ("waiting", "queued", "creating") for r in live)
        before_confirm: int = before_record + sum(r["state"] == "uploading" for r in live)
        if point in ("before_create", "after_create_response", "after_record_committed"):
            return min(3, before_record + len(coming))
        if point in ("after_chunk_response", "after_chunk_committed"):
            chunk = chunk_size or 1 << 40  # 0: one request per file
            chunks: int = sum(
                math.ceil(max(1, int(r["size"]) - int(r["bytes_acked"])) / chunk)
                for r in live
                if r["state"] != "confirming"
            )
            chunks += sum(math.ceil(max(1, s.size) / chunk) for s in coming)
            return min(12, chunks)
        if point == "in_confirming":
            return min(3, before_confirm + len(coming))
        if point in ("after_ready", "before_after_action", "after_move"):
            return min(3, len(live) + len(coming))
        if point == "after_delete_response":
            return min(2, pending) or (1 if self.changeable(rows) else 0)
        raise ValueError(point)

    def changeable(self, rows: list[dict[str, Any]]) -> FileSpec | None:
        """A file whose upload is under way (it has a record): it may be changed now."""
        by_path = {str(self.export / s.relpath): s for s in self.specs}
        candidates = [
            spec
            for row in newest_jobs(rows).values()
            if (spec := by_path.get(row["path"])) is not None
            and spec.written
            and spec.changes < MAX_CHANGES
            and row["state"] in ("uploading", "confirming")
            and row["record_id"]
        ]
        return self.rng.choice(candidates) if candidates else None

    def idle(self, rows: list[dict[str, Any]]) -> bool:
        """No job left to work on and no file on its way."""
        known = newest_jobs(rows)
        coming = any(s.started and str(self.export / s.relpath) not in known for s in self.specs)
        return not coming and not any(r["state"] in LIVE for r in known.values())

    def next_run(self, chunk_size: int) -> tuple[str, int | None, float | None]:
        """The next kind of run, its failpoint count or random delay."""
        for _ in range(3):
            rows, pending = ledger_state(self.ledger)
            for position, kind in enumerate(self.plan):
                if kind == "random":
                    del self.plan[position]
                    if self.idle(rows):  # a kill is worth more with work to do
                        self.bring_forward()
                        self.appear()
                    return kind, None, self.rng.uniform(*self.options.random_delay)
                reach = self.feasible(kind, rows, pending, chunk_size)
                if reach:
                    del self.plan[position]
                    if kind == "after_delete_response" and not pending:
                        spec = self.changeable(rows)
                        assert spec is not None
                        append_to(spec, self.export, self.options.seed, self.rng)
                        self.say(f"      changed {spec.relpath} mid-upload")
                    return kind, self.rng.randint(1, reach), None
            # No failpoint planned can be reached now: more work (or let a random kill make it).
            self.bring_forward()
            self.appear()
        return "random", None, self.rng.uniform(*self.options.random_delay)

    # --- the phases -------------------------------------------------------------------

    def kills(self) -> None:
        while self.plan and time.monotonic() < self.deadline:
            self.appear()
            chunk_size = self.rng.choice(CHUNK_SIZES)
            kind, count, delay = self.next_run(chunk_size)
            if self.rng.random() < 0.08:  # now and then a file changes while the daemon is down
                rows, _ = ledger_state(self.ledger)
                spec = self.changeable(rows)
                if spec is not None:
                    append_to(spec, self.export, self.options.seed, self.rng)
                    self.say(f"      changed {spec.relpath} mid-upload")
            record = self.one_run(kind, count, delay, chunk_size)
            if kind == "random":
                self.report.random_kills += record.outcome == "killed"
            elif record.outcome == "hit":
                self.report.kills[kind] += 1
            else:
                self.report.missed[kind] += 1
                self.plan.append(kind)  # try again later
            rows, _ = ledger_state(self.ledger)
            done = sum(r["state"] == "done" for r in newest_jobs(rows).values())
            self.say(
                f"run {record.number:>3}  {kind}:{count if count is not None else f'{delay:.1f}s'}"
                f"  chunk {chunk_label(record.chunk_size)}  -> {record.outcome}"
                f"  ({record.seconds:.1f}s; {done}/{len(self.specs)} files done)"
            )
            if self.writer.error is not None:
                raise RuntimeError(f"the slow writer failed: {self.writer.error}")
        if self.plan:
            left = Counter(k for k in self.plan if k != "random")
            self.report.problems.append(
                f"time limit ({self.options.minutes} min) reached with kills still planned: "
                f"{dict(left)} and {self.plan.count('random')} random"
            )

    def finish(self) -> None:
        """Every file appears; one run without kills until every file is done, then SIGTERM."""
        for spec in self.specs:
            spec.appear_run = min(spec.appear_run, self.run_number + 1)
        self.appear()
        self.writer.wait_idle()
        self.run_number += 1
        chunk_size = self.rng.choice(CHUNK_SIZES)
        self.chunk_sizes_used.add(chunk_size)
        started = time.monotonic()
        log_offset = self.log.stat().st_size if self.log.exists() else 0
        process = self.start_daemon("final", None, chunk_size)
        outcome = "clean"
        try:
            deadline = time.monotonic() + self.options.final_timeout
            while not self.all_done():
                failed = self.failed_jobs()
                if failed:
                    outcome = f"{failed} job(s) failed"
                    break
                if process.poll() is not None:
                    outcome = f"exited with {process.returncode}"
                    break
                if time.monotonic() > deadline:
                    outcome = f"not done within {self.options.final_timeout:.0f} s"
                    break
                time.sleep(0.25)
        finally:
            # A SIGTERM before the daemon installed its handlers kills it (-15): that is
            # the campaign's timing, not the daemon's fault, so wait until it has started.
            self.wait_started(process, log_offset)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    code = process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    code = process.wait(30)
                if code != 0 and outcome == "clean":
                    outcome = f"SIGTERM: exit code {code}"
        self.report.runs.append(
            RunRecord(
                self.run_number, "final", None, chunk_size, outcome, time.monotonic() - started
            )
        )
        self.say(f"run {self.run_number:>3}  final  chunk {chunk_label(chunk_size)}  -> {outcome}")
        if outcome != "clean":
            self.report.problems.append(f"final run: {outcome}")

    def wait_started(self, process: subprocess.Popen[bytes], offset: int) -> None:
        """Until this run's log says ``daemon.started`` (or the process ended, or 60 s)."""
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            with open(self.log, "rb") as handle:
                handle.seek(offset)
                if b"daemon.started" in handle.read():
                    return
            time.sleep(0.1)

    def failed_jobs(self) -> int:
        rows, _ = ledger_state(self.ledger)
        return sum(r["state"] == "failed" for r in newest_jobs(rows).values())

    def all_done(self) -> bool:
        rows, pending = ledger_state(self.ledger)
        newest = newest_jobs(rows)
        for spec in self.specs:
            row = newest.get(str(self.export / spec.relpath))
            if row is None or row["state"] != "done" or not row["after_done"]:
                return False
            if row["size"] != spec.size:
                return False
        return pending == 0 and not any(r["state"] in LIVE for r in newest.values())

    # --- checking ------------------------------------------------------------------------

    def verify(self) -> None:
        report = self.report
        snapshot = self.server.snapshot()
        rows, pending = ledger_state(self.ledger)
        records = snapshot["records"]
        report.records = len(records)
        report.deleted_records = len(snapshot["deleted"])
        report.faults = dict(snapshot["faults_injected"])
        report.upload_bytes = int(snapshot["upload_bytes_received"])
        report.files = len(self.specs)
        report.file_bytes = sum(s.size for s in self.specs)
        report.smallest = min(s.size for s in self.specs)
        report.largest = max(s.size for s in self.specs)
        report.slow_files = sum(s.slow for s in self.specs)
        report.changed_files = sum(s.changes > 0 for s in self.specs)
        report.chunk_sizes = sorted(self.chunk_sizes_used)
        by_name: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_name.setdefault(record["name"], []).append(record)
        newest = newest_jobs(rows)
        for spec in self.specs:
            self.check_file(
                spec, by_name.get(spec.stem, []), newest.get(str(self.export / spec.relpath))
            )
        done_ids = {r["record_id"] for r in rows if r["state"] == "done" and r["record_id"]}
        for record in records:
            video = (record["videos"] or [{}])[0]
            complete = video.get("total") is not None and video.get("received") == video.get(
                "total"
            )
            if record["id"] not in done_ids or not complete:
                report.partial_or_orphan += 1
                report.problems.append(
                    f"record {record['id']} ({record['name']!r}) is partial or an orphan: "
                    f"{video.get('received')} of {video.get('total')} bytes"
                )
        if pending:
            report.problems.append(f"{pending} partial record(s) still queued for deletion")
        overlaps = self.events.overlaps()
        report.two_at_once = len(overlaps)
        for name, most in sorted(overlaps.items()):
            report.problems.append(
                f"{name}: {most} records at one moment (a partial one not deleted before "
                "the next was made)"
            )
        for state in ("failed", "skipped"):
            count = sum(r["state"] == state for r in newest.values())
            if count:
                report.problems.append(f"{count} job(s) {state}")
        self.check_log()
        self.check_coverage()

    def check_file(
        self, spec: FileSpec, mine: list[dict[str, Any]], row: dict[str, Any] | None
    ) -> None:
        """One file: one record holding its bytes, its job done, its source moved."""
        report = self.report
        report.records_per_file[spec.relpath] = len(mine)
        if len(mine) != 1:
            report.problems.append(f"{spec.relpath}: {len(mine)} records on the server")
        if row is None or row["state"] != "done":
            report.not_done += 1
            state = row["state"] if row else "no job"
            detail = f" ({row['fail_reason']}: {row['fail_detail']})" if row else ""
            report.problems.append(f"{spec.relpath}: not done but {state}{detail}")
            return
        server_sha = [(r["videos"] or [{}])[0].get("sha256") for r in mine]
        if not mine or row["sha256"] != spec.sha256 or any(s != spec.sha256 for s in server_sha):
            report.bytes_differ += 1
            report.problems.append(
                f"{spec.relpath}: source sha256 {spec.sha256[:12]}, ledger "
                f"{str(row['sha256'])[:12]}, server {[str(s)[:12] for s in server_sha]}"
            )
        if mine and row["record_id"] != mine[0]["id"]:
            report.problems.append(f"{spec.relpath}: the ledger names another record")
        report.moved_ok += self.check_moved(spec, row)

    def check_moved(self, spec: FileSpec, row: dict[str, Any]) -> bool:
        source = self.export / spec.relpath
        final = Path(row["final_path"]) if row["final_path"] else None
        expected = self.moved / spec.relpath
        if source.exists():
            self.report.problems.append(f"{spec.relpath}: still in the watch folder after done")
            return False
        if final != expected or not expected.exists():
            self.report.problems.append(f"{spec.relpath}: moved to {final}, not {expected}")
            return False
        if sha256_file(expected) != spec.sha256:
            self.report.problems.append(f"{spec.relpath}: the moved copy differs from the source")
            return False
        return True

    def check_log(self) -> None:
        bad: Counter[str] = Counter()
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                if line.startswith("Traceback"):
                    bad["traceback"] += 1
                continue
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event in ("job.internal_error", "daemon.task_failed", "job.failed"):
                bad[event] += 1
        self.report.internal_errors = sum(bad.values())
        if bad:
            self.report.problems.append(f"the daemon logged {dict(bad)} (see {self.log})")

    def check_coverage(self) -> None:
        for name in FAILPOINTS:
            if self.report.kills[name] < self.options.kills_per_failpoint:
                self.report.problems.append(
                    f"failpoint {name}: {self.report.kills[name]} kills, "
                    f"{self.options.kills_per_failpoint} wanted"
                )

    # --- the whole -----------------------------------------------------------------------

    def filesystem(self) -> None:
        """The file-system part, against its own server; its problems join the report's."""
        assert self.options.fs is not None
        self.options.fs.verbose = self.options.verbose
        self.say("file-system actions, the daemon as nobody:")
        fs = run_fs_campaign(self.options.fs)
        self.report.fs = fs
        self.report.internal_errors += fs.internal_errors
        self.report.problems += [f"fs: {p}" for p in fs.problems]
        if fs.problems:
            self.say(f"file-system work folder kept: {fs.workdir}")

    def run(self) -> Report:
        options = self.options
        self.say(f"ingestd crash campaign: seed {options.seed} (replay: --seed {options.seed})")
        work = options.workdir or Path(tempfile.mkdtemp(prefix="ingestd-chaos-"))
        work.mkdir(parents=True, exist_ok=True)
        self.report.workdir = str(work)
        self.setup(work)
        faults = Faults(**FAULTS, seed=options.seed)
        try:
            with FakeValtThread(
                work / "server", users={USERNAME: PASSWORD}, faults=faults
            ) as server:
                self.server = server
                self.events.install(server)
                try:
                    self.kills()
                    self.finish()
                finally:
                    self.writer.close()
                self.verify()
            if options.run_fs:
                self.filesystem()
        finally:
            self.report.seconds = time.monotonic() - self.started_at
        if self.report.ok and not options.keep and options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            self.say(f"work folder kept: {work}")
        return self.report


def _wait(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return process.wait(seconds)
    return None


def run_campaign(options: Options) -> Report:
    """Run one campaign; the report holds the table and the problems found."""
    return Campaign(options).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument("--short", action="store_true", help="the short form (as in make test)")
    parser.add_argument("--files", type=int, help="number of files")
    parser.add_argument("--kills-per-failpoint", type=int, help="kills at each failpoint")
    parser.add_argument("--random-kills", type=int, help="kills at random moments")
    parser.add_argument("--minutes", type=float, help="time limit for the kills")
    parser.add_argument("--max-size", help="largest file, e.g. 40MiB")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    parser.add_argument("--workdir", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    parser.add_argument("--fs-actions", type=int, help="file-system actions per phase")
    parser.add_argument("--no-fs", action="store_true", help="skip the file-system actions")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**9)
    options = Options.short(seed) if args.short else Options(seed=seed)
    for name in ("files", "kills_per_failpoint", "random_kills", "minutes"):
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, value)
    if args.max_size:
        options.max_size = parse_size(args.max_size, "--max-size")
    options.workdir, options.keep, options.verbose = args.workdir, args.keep, not args.quiet
    options.run_fs = not args.no_fs
    if args.fs_actions is not None and options.fs is not None:
        options.fs.actions_per_phase = args.fs_actions
    print(f"seed: {seed}", flush=True)
    report = run_campaign(options)
    print()
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
