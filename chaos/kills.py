"""The crash campaign's daemon runs: start it, kill it at a failpoint or at random, finish."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaos.harness import (
    LIVE,
    PASSWORD,
    ServerEvents,
    daemon_env,
    kill,
    ledger_state,
    newest_jobs,
    spawn_daemon,
    terminate,
    wait_exit,
    wait_started,
    write_config,
)
from chaos.plan import (
    CHUNK_SIZES,
    MAX_CHANGES,
    FileSpec,
    Options,
    SlowWriter,
    append_to,
    extra_file,
    plan_files,
    plan_kills,
    write_file,
)
from chaos.report import Report, RunRecord, chunk_label
from ingestd.failpoints import FAILPOINTS
from ingestd.fake_valt import FakeValtThread


class Campaign:
    """Everything one campaign holds: the server, the files, the plan, the daemon."""

    server: FakeValtThread

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
        # A failpoint that cannot be reached now waits its turn in the plan.
        self.plan = plan_kills(options, self.rng)
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
            write_config(
                path,
                self.server.url,
                self.export,
                settle="0.5s",
                rescan_interval="2s",
                upload={"chunk_size": chunk_size, "backoff_initial": "0.05s", "backoff_max": "1s"},
                after_upload={"action": "move", "move_to": str(self.moved)},
                ledger={"path": str(self.ledger)},
            )
        return path

    def say(self, text: str) -> None:
        if self.options.verbose:
            print(text, flush=True)

    # --- running the daemon ---------------------------------------------------------

    def start_daemon(
        self, kind: str, count: int | None, chunk_size: int
    ) -> tuple[subprocess.Popen[bytes], int]:
        """The daemon, armed at ``kind:count`` if a count is given; and its log's offset."""
        env = daemon_env(PASSWORD, f"{kind}:{count}" if count is not None else None)
        header = f"run {self.run_number}: {kind}:{count} chunk_size={chunk_size}"
        return spawn_daemon(self.config_for(chunk_size), self.log, header, env, self.work)

    def one_run(
        self, kind: str, count: int | None, delay: float | None, chunk_size: int
    ) -> RunRecord:
        self.run_number += 1
        self.chunk_sizes_used.add(chunk_size)
        started = time.monotonic()
        process, _ = self.start_daemon(kind, count, chunk_size)
        try:
            if count is not None:
                code = wait_exit(process, self.options.failpoint_timeout)
                if code is None:
                    outcome = "missed"
                elif code == -signal.SIGKILL:
                    outcome = "hit"
                else:
                    outcome = f"exited with {code}"
            else:
                assert delay is not None
                code = wait_exit(process, delay)
                outcome = "killed" if code is None else f"exited with {code}"
        finally:
            kill(process)
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
        self.specs.append(extra_file(self.options, self.rng, len(self.specs), self.run_number + 1))

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

    def change(self, spec: FileSpec) -> None:
        append_to(spec, self.export, self.options.seed, self.rng)
        self.say(f"      changed {spec.relpath} mid-upload")

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
                        self.change(spec)
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
                    self.change(spec)
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
        process, log_offset = self.start_daemon("final", None, chunk_size)
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
            wait_started(process, self.log, log_offset, 60, 0.1)
            if process.poll() is None:
                code = terminate(process)
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
