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

The parts: ``plan`` (options, the seeded files and kills), ``kills`` (the daemon
runs), ``checks`` (the invariants), ``report`` (the table and JSON); the
file-system part is ``chaos_fs`` with its ``fs_*`` modules; ``harness`` (the fake
server, configs, daemons, the ledger) is shared with the power-cut campaign.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chaos.chaos_fs import run_fs_campaign
from chaos.checks import verify
from chaos.harness import FAULTS, fake_server, finish_main
from chaos.kills import Campaign
from chaos.plan import Options
from chaos.report import Report
from ingestd.fake_valt import Faults
from ingestd.units import parse_size

__all__ = ["Campaign", "Options", "Report", "main", "run_campaign"]


def filesystem(campaign: Campaign) -> None:
    """The file-system part, against its own server; its problems join the report's."""
    options, report = campaign.options, campaign.report
    assert options.fs is not None
    options.fs.verbose = options.verbose
    campaign.say("file-system actions, the daemon as nobody:")
    fs = run_fs_campaign(options.fs)
    report.fs = fs
    report.internal_errors += fs.internal_errors
    report.problems += [f"fs: {p}" for p in fs.problems]
    if fs.problems:
        campaign.say(f"file-system work folder kept: {fs.workdir}")


def run_campaign(options: Options) -> Report:
    """Run one campaign; the report holds the table and the problems found."""
    campaign = Campaign(options)
    report = campaign.report
    campaign.say(f"ingestd crash campaign: seed {options.seed} (replay: --seed {options.seed})")
    work = options.workdir or Path(tempfile.mkdtemp(prefix="ingestd-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    report.workdir = str(work)
    campaign.setup(work)
    faults = Faults(**FAULTS, seed=options.seed)
    try:
        with fake_server(work / "server", faults) as server:
            campaign.server = server
            campaign.events.install(server)
            try:
                campaign.kills()
                campaign.finish()
            finally:
                campaign.writer.close()
            verify(campaign)
        if options.run_fs:
            filesystem(campaign)
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
    return finish_main(report.table(), report.as_json(), args.json, report.ok)


if __name__ == "__main__":
    sys.exit(main())
