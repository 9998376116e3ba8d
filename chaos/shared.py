"""The shared-ledger crash campaign: several daemons, one share, one PostgreSQL, faults.

Three daemons (nodes ``a``, ``b``, ``c``, each with its own config, ``ledger.lease: 5s``)
watch one share (each at a path of its own, by the name ``export``) and share one
PostgreSQL ledger (a real server, ``chaos/pg.py``), against the faulty fake Valt
server of the crash campaign (``harness.FAULTS``: 500 and 502 pages, dropped, slow
and hung requests, expiring tokens); each node sends at most ``upload.bandwidth_limit``
(4 MB/s), so that an upload lasts longer than a lease, as on a real link. While files
arrive on the share (some written slowly, a few holding the same bytes as another file:
one is uploaded, the others skipped as duplicates), the campaign

- SIGKILLs a random node again and again, each started again after a short pause
  with a new ``upload.chunk_size``;
- SIGKILLs the PostgreSQL server once and starts it again (crash recovery) while
  the nodes run;
- cuts one node off PostgreSQL for longer than the lease, while it keeps running
  (every node reaches PostgreSQL through a TCP proxy of its own, ``pg_proxy.py``; the
  one cut off is a node found uploading at that moment), then lets it back.

Then every node runs until each job is done (with a deadline) and is stopped with
SIGTERM, and the checks (``shared_checks.py``) compare the server, the ledger and
the moved files with the sources; the table says which one missed. Exit 0 only if
every check holds.

    .venv/bin/python -m chaos.shared                 # the long form (make chaos)
    .venv/bin/python -m chaos.shared --short         # the short form (as in make test)
    .venv/bin/python -m chaos.shared --seed 1234     # replay a run's plan

The seed fixes the files, the moments of the kills and outages, the pauses, the
chunk sizes and the server's fault dice; which node a kill lands on and what it was
doing depend on timing, so a replay repeats the plan, not every interleaving.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chaos.harness import FAULTS, LIVE, ServerEvents, fake_server, finish_main, newest_jobs
from chaos.pg import PgServer
from chaos.pg_proxy import PgProxy
from chaos.plan import CHUNK_SIZES, SlowWriter, write_file
from chaos.report import chunk_label
from chaos.shared_checks import verify
from chaos.shared_nodes import Node, claims, migrate, read_ledger
from chaos.shared_plan import SharedOptions, extra_file, ledger_path, plan_faults, plan_files
from chaos.shared_report import SharedReport
from chaos.shared_server import ChunkLog
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.units import parse_size

__all__ = ["SharedCampaign", "SharedOptions", "SharedReport", "main", "run_campaign"]

DATABASE = "ingestd"
TICK = 0.1  # s between two looks at the plan and the nodes
EXTRA = 120.0  # s the kills, the PostgreSQL kill and the cut-off may wait past their plan
UNDER_WAY = ("creating", "uploading", "confirming")


class SharedCampaign:
    """The nodes, PostgreSQL, the proxies, the files and the plan of faults."""

    server: FakeValtThread
    pg: PgServer

    def __init__(self, options: SharedOptions) -> None:
        self.options = options
        self.rng = random.Random(f"{options.seed}:shared")
        self.specs = plan_files(options, self.rng)
        self.plan = plan_faults(options, self.rng)
        self.report = SharedReport(
            seed=options.seed,
            options={k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
            started=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            cores=os.cpu_count() or 1,
            nodes=list(options.node_names),
            lease=options.lease,
        )
        self.events = ServerEvents()
        self.chunks = ChunkLog()
        self.nodes: dict[str, Node] = {}
        self.proxies: dict[str, PgProxy] = {}
        self.cut_node: Node | None = None
        self.nudged = 0.0  # when the cut-off last brought a file forward (monotonic)
        self.chunk_sizes: set[int] = set()
        self.started_at = time.monotonic()
        self.t0 = self.started_at
        self.pg_back_at: float | None = None  # PostgreSQL is down until then
        self.cut_until: float | None = None  # the cut-off lasts until then
        self.cut_began = 0.0

    def say(self, text: str) -> None:
        if self.options.verbose:
            print(f"{self.now():6.1f}s  {text}", flush=True)

    def now(self) -> float:
        """Seconds since the nodes first started."""
        return time.monotonic() - self.t0

    # --- set-up -----------------------------------------------------------------------

    def setup(self, work: Path) -> None:
        self.work = work
        self.share = work / "share"
        self.moved = work / "moved"
        self.share.mkdir(parents=True)
        self.moved.mkdir()
        self.writer = SlowWriter(self.share, self.options.seed, random.Random(self.rng.random()))

    def make_nodes(self, stack: contextlib.ExitStack) -> None:
        """One node per name; all but the first see the share through a link of their own
        (another mount point); each reaches PostgreSQL through a proxy of its own."""
        self.url = self.pg.url(DATABASE)
        for number, name in enumerate(self.options.node_names):
            mount = self.share
            if number:
                mount = self.work / f"mnt-{name}"
                mount.symlink_to(self.share)
            proxy = self.proxies[name] = stack.enter_context(PgProxy(self.pg.socket_path))
            url = proxy.url(DATABASE)
            self.nodes[name] = Node(
                name,
                self.work / f"node-{name}",
                mount,
                url,
                server_url=self.server.url,
                lease=self.options.lease,
                bandwidth=self.options.bandwidth,
            )
        first = next(iter(self.nodes.values()))
        migrate(first.config(0, self.moved), self.work)
        self.t0 = time.monotonic()
        for node in self.nodes.values():
            self.start(node)

    def start(self, node: Node) -> None:
        chunk_size = self.rng.choice(CHUNK_SIZES)
        self.chunk_sizes.add(chunk_size)
        node.start(chunk_size, self.moved, f"chunk_size={chunk_size} at {self.now():.1f}s")
        assert node.process is not None
        self.chunks.names[node.process.pid] = node.name
        self.say(f"node {node.name} starts (chunk {chunk_label(chunk_size)})")

    # --- the files --------------------------------------------------------------------

    def appear(self, now: float) -> None:
        for spec in self.specs:
            if spec.started or spec.appear_at > now:
                continue
            spec.started = True
            if spec.slow:
                self.writer.add(spec)
            else:
                write_file(spec, self.share, self.options.seed, None)
        if self.writer.error is not None:
            raise RuntimeError(f"the slow writer failed: {self.writer.error}")

    # --- the nodes --------------------------------------------------------------------

    def supervise(self) -> None:
        """A node that ended by itself is a problem (and is started again); a killed node
        comes back when its pause is over, once PostgreSQL runs."""
        for node in self.nodes.values():
            code = node.exited()
            if code is not None:
                self.report.own_exits += 1
                self.report.problems.append(
                    f"node {node.name} exited by itself at {self.now():.1f} s with {code} "
                    f"(see {node.log})"
                )
                self.say(f"node {node.name} EXITED with {code}")
                node.restart_at = time.monotonic() + 1
            due = node.restart_at is not None and time.monotonic() >= node.restart_at
            if node.process is None and due and self.pg_back_at is None:
                self.start(node)

    def kill_one(self) -> bool:
        """SIGKILL a random started node (not the one cut off); False if none may be."""
        ready = [node for node in self.nodes.values() if node.started and not node.cut_off]
        if not ready:
            return False
        node = self.rng.choice(ready)
        pause = self.rng.uniform(*self.options.restart_pause)
        node.kill(time.monotonic() + pause)
        self.say(f"node {node.name} SIGKILL (back in {pause:.1f} s)")
        return True

    # --- PostgreSQL ---------------------------------------------------------------------

    def pg_step(self, now: float) -> None:
        """Kill PostgreSQL at its moment (not while a node starts or one is cut off), and
        start it again when its time down is over."""
        if self.pg_back_at is not None:
            if time.monotonic() >= self.pg_back_at:
                self.pg.start()
                self.report.pg_down_s = self.now() - (self.report.pg_kill_at or 0.0)
                self.pg_back_at = None
                self.say(f"PostgreSQL started again after {self.report.pg_down_s:.1f} s")
            return
        if self.report.pg_kill_at is not None or now < self.plan.pg_kill_at:
            return
        starting = any(node.alive and not node.settled for node in self.nodes.values())
        if starting or self.cut_until is not None:
            return
        self.pg.kill()
        self.report.pg_kill_at = now
        self.pg_back_at = time.monotonic() + self.plan.pg_down_for
        self.say(f"PostgreSQL SIGKILL (down for {self.plan.pg_down_for:.1f} s)")

    def cut_step(self, now: float) -> None:
        """Once PostgreSQL's outage is over, cut off a node found uploading (any with a job
        under way, once ``cut_wait`` is over; files arrive early meanwhile); let it back
        after more than a lease."""
        if self.cut_until is not None:
            if time.monotonic() >= self.cut_until:
                assert self.cut_node is not None
                self.proxies[self.cut_node.name].restore()
                self.cut_node.cut_off = False
                self.cut_until = None
                self.report.cut_s = time.monotonic() - self.cut_began
                self.say(f"node {self.cut_node.name} reaches PostgreSQL again")
            return
        if self.report.cut_at is not None or now < self.plan.cut_at:
            return
        if self.report.pg_kill_at is None or self.pg_back_at is not None:
            return
        held = claims(self.url)
        ready = [node for node in self.nodes.values() if node.settled]
        sending = [n for n in ready if held.get(n.name, {}).get("uploading")]
        busy = [n for n in ready if any(held.get(n.name, {}).get(s) for s in UNDER_WAY)]
        late = now >= self.plan.cut_at + self.options.cut_wait
        chosen = sending or busy or (ready if late else [])
        if not chosen:
            self.nudge(now)
            return
        node = self.cut_node = self.rng.choice(chosen)
        self.proxies[node.name].cut(mode="hang", existing="hang")
        node.cut_off = True
        self.cut_began = time.monotonic()
        self.cut_until = self.cut_began + self.plan.cut_for
        self.report.cut_at, self.report.cut_node = now, node.name
        jobs = ", ".join(f"{k} {v}" for k, v in sorted(held.get(node.name, {}).items()))
        self.say(
            f"node {node.name} cut off from PostgreSQL for {self.plan.cut_for:.1f} s "
            f"(its claims: {jobs or 'none'})"
        )

    def nudge(self, now: float) -> None:
        """The cut-off waits for work: the next file arrives now (one more if none is left),
        once a second."""
        if time.monotonic() - self.nudged < 1.0:
            return
        self.nudged = time.monotonic()
        later = [spec for spec in self.specs if not spec.started]
        if later:
            later[0].appear_at = now
        else:
            index = max(spec.index for spec in self.specs) + 1
            self.specs.append(extra_file(self.options, self.rng, index, now))
        self.appear(now)

    # --- the phases ---------------------------------------------------------------------

    def chaos(self) -> None:
        """Files arrive and faults come, as planned; until every planned fault came."""
        kills = list(self.plan.kill_at)
        end = self.options.seconds
        while True:
            now = self.now()
            self.appear(now)
            self.supervise()
            if kills and now >= kills[0]:
                if self.kill_one():
                    kills.pop(0)
                else:
                    kills[0] = now + 0.5
            self.pg_step(now)
            self.cut_step(now)
            over = self.report.cut_s > 0 and self.pg_back_at is None
            if now >= end and not kills and over:
                return
            if now >= end + EXTRA:
                self.report.problems.append(
                    f"not every planned fault came within {end + EXTRA:.0f} s: "
                    f"{len(kills)} kill(s) left, PostgreSQL killed: "
                    f"{self.report.pg_kill_at is not None}, cut off: {self.report.cut_s > 0}"
                )
                return
            time.sleep(TICK)

    def finish(self) -> None:
        """Every file is there; every node runs until each job is done, then SIGTERM."""
        if self.cut_until is not None and self.cut_node is not None:
            self.proxies[self.cut_node.name].restore()
            self.cut_node.cut_off = False
        self.pg.start()
        self.pg_back_at = None
        self.appear(float("inf"))
        self.writer.wait_idle()
        for node in self.nodes.values():
            if node.process is None:
                node.restart_at = 0.0
        self.say("every file is on the share; the nodes finish")
        deadline = time.monotonic() + self.options.final_timeout
        while not self.all_done():
            self.supervise()
            if time.monotonic() > deadline:
                self.report.problems.append(
                    f"not done within {self.options.final_timeout:.0f} s of the last fault"
                )
                break
            time.sleep(0.5)
        self.say("the nodes stop")
        self.stop_all()

    def stop_all(self) -> None:
        for node in self.nodes.values():
            code = node.stop()
            if code not in (0, None):
                self.report.own_exits += 1
                self.report.problems.append(
                    f"node {node.name}: SIGTERM ended it with {code} (see {node.log})"
                )
        self.report.starts = {name: node.starts for name, node in self.nodes.items()}
        self.report.kills = {name: node.kills for name, node in self.nodes.items()}
        self.report.chunk_sizes = sorted(self.chunk_sizes)

    def all_done(self) -> bool:
        """Each file done and moved, or skipped as a copy; nothing live, nothing to delete."""
        state = read_ledger(self.url)
        if state is None:
            return False
        rows, pending = state
        newest = newest_jobs(rows)
        for spec in self.specs:
            row = newest.get(ledger_path(spec))
            if row is None:
                return False
            if row["state"] == "failed":
                return True  # it stays failed: the checks say so
            if row["state"] == "skipped":
                continue
            if row["state"] != "done" or not row["after_done"] or row["size"] != spec.size:
                return False
        return pending == 0 and not any(row["state"] in LIVE for row in newest.values())


def run_campaign(options: SharedOptions) -> SharedReport:
    """Run one campaign; the report holds the table and the problems found."""
    campaign = SharedCampaign(options)
    report = campaign.report
    campaign.say(f"ingestd shared-ledger campaign: seed {options.seed}")
    work = options.workdir or Path(tempfile.mkdtemp(prefix="ingestd-chaos-shared-"))
    work.mkdir(parents=True, exist_ok=True)
    report.workdir = str(work)
    campaign.setup(work)
    faults = Faults(**FAULTS, seed=options.seed)
    try:
        with contextlib.ExitStack() as stack:
            campaign.pg = pg = stack.enter_context(PgServer.create())
            campaign.server = stack.enter_context(fake_server(work / "server", faults))
            pg.psql(f"CREATE DATABASE {DATABASE}")
            campaign.events.install(campaign.server)
            campaign.chunks.install(campaign.server)
            try:
                campaign.make_nodes(stack)
                campaign.chaos()
                campaign.finish()
            finally:
                for node in campaign.nodes.values():
                    node.abandon()
                campaign.writer.close()
            verify(campaign)
            campaign.chunks.write(work / "chunks.jsonl")
    finally:
        report.seconds = time.monotonic() - campaign.started_at
    if report.ok and not options.keep and options.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        campaign.say(f"work folder kept: {work}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument("--short", action="store_true", help="the short form (as in make test)")
    parser.add_argument("--nodes", type=int, help="number of daemons (2 to 26)")
    parser.add_argument("--files", type=int, help="number of files, copies included")
    parser.add_argument("--duplicates", type=int, help="files that copy another's bytes")
    parser.add_argument("--kills", type=int, help="node kills at random moments")
    parser.add_argument("--minutes", type=float, help="how long files arrive and faults come")
    parser.add_argument("--max-size", help="largest file, e.g. 24MiB")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    parser.add_argument("--workdir", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**9)
    options = SharedOptions.short(seed) if args.short else SharedOptions(seed=seed)
    for name in ("nodes", "files", "duplicates", "kills", "minutes"):
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, value)
    if args.max_size:
        options.max_size = parse_size(args.max_size, "--max-size")
    options.workdir, options.keep, options.verbose = args.workdir, args.keep, not args.quiet
    print(f"seed: {seed}", flush=True)
    report = run_campaign(options)
    return finish_main(report.table(), report.as_json(), args.json, report.ok)


if __name__ == "__main__":
    sys.exit(main())
