"""The power-cut campaign: ingestd on a file system that forgets what was not synced.

Three daemons (``python -m ingestd run``, real processes), one per
after-upload action - ``keep`` with ``keep_for``, ``move``, ``delete`` - run
on the power-cut file system (``powercut/``): each one's ledger and its
backups, watch folder, ``move_to`` and ``failed_to`` all live on it (the
move daemon's ``move_to`` and ``failed_to`` on a second such volume, so its
moves cross file systems; the others' set-asides are renames). The
fake Valt server (in this process, on the real disk: another machine)
injects the crash campaign's faults (``chaos/harness.py``). Recordings
arrive while the daemons run: some at once, some written slowly under their
final name, some slowly under ``NAME.part`` and then renamed.

A recording has *finished arriving* when its writer has written every byte,
fsynced the file and then fsynced its folder (after a rename from ``.part``,
too): what a recorder that cares must do before it may say "saved". Until
then a power cut may take it, and the campaign (the recorder) starts it over.

Then, again and again, at a random moment: the power goes. The daemons are
SIGKILLed, the writer drops its open files, the file system's server is
killed (all unsynced data and names are gone) and the mount is remounted.
The invariants are checked on what the disk kept; backups are sometimes
aged by a day (the clock moving on, so a new backup and a rotation are due
at the next start), and the daemons start again. At the end every recording
arrives, the daemons run until all is done and stop cleanly, the power is
cut once more and everything is checked a last time.

Invariants, after every cut and at the end:

- every ledger opens and passes ``quick_check``; every backup under a
  backup's final name does too; no more backups are left than
  ``ledger.backups`` (one more between a backup and its rotation);
- every recording that finished arriving is complete and byte-identical in
  at least one place: the watch folder, ``move_to``, or the server (a
  ``ready`` video there);
- no file under a final name in ``move_to``/``failed_to`` is half written
  (each is a complete recording; an ``NAME.error.txt`` is whole);
- no job is ``done`` whose server copy is incomplete or differs;
- no name has two records at one moment; at the end exactly one complete
  record per recording and no partial record or pending deletion is left.

    .venv/bin/python -m powercut.campaign            # the long form (make power)
    .venv/bin/python -m powercut.campaign --short    # the short form (as in make test)
    .venv/bin/python -m powercut.campaign --seed N   # replay a plan

The parts: ``plan`` (options, recordings, stations), ``rig`` (the daemons and the
recorders), ``invariants`` (the checks), ``report`` (the table); the fake server,
configs and daemon processes come from ``chaos.harness``.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from chaos.harness import FAULTS, fake_server, finish_main
from ingestd.fake_valt import Faults
from powercut.invariants import all_done, check, check_end
from powercut.plan import STARTUP_CUTS, Options
from powercut.report import Report
from powercut.rig import Rig

__all__ = ["Campaign", "Options", "Report", "main", "run_campaign"]


class Campaign(Rig):
    """The rig, cut again and again, checked after every cut and at the end."""

    def cut(self) -> None:
        self.kill_daemons()
        dropped = self.drop_writers()
        self.disk.cut()
        self.other.cut()
        self.cut_number += 1
        self.report.cuts += 1
        check(self, final=False)
        self.start_over(dropped)
        self.age_backups()

    def finish(self) -> None:
        """Every recording arrives; the daemons run until all is done, then stop cleanly."""
        for rec in self.recordings:
            rec.appear_cut = min(rec.appear_cut, self.cut_number)
            rec.style = "fast" if rec.handle is None else rec.style
        self.start_daemons()
        self.run_until_started()  # a SIGTERM before the handlers are set would kill it
        deadline = time.monotonic() + self.options.final_timeout
        while time.monotonic() < deadline:
            self.run_for(0.5)
            if all(r.finished for r in self.recordings) and all_done(self):
                break
        else:
            self.report.problem(f"not all done within {self.options.final_timeout:.0f} s")
        self.stop_daemons()
        self.disk.cut()  # a power cut after a clean stop: all that was claimed must be on disk
        self.other.cut()
        self.report.cuts += 1
        self.cut_number += 1
        check(self, final=False)
        check_end(self)

    def run(self) -> Report:
        options = self.options
        work = options.workdir or Path(tempfile.mkdtemp(prefix="ingestd-power-"))
        work.mkdir(parents=True, exist_ok=True)
        self.report.workdir = str(work)
        self.say(f"ingestd power-cut campaign: seed {options.seed}, {options.mode} mode")
        faults = Faults(**FAULTS, seed=options.seed)
        try:
            with fake_server(work / "server", faults) as server:
                self.server = server
                self.events.install(server)
                self.setup(work)
                try:
                    while self.cut_number < options.cuts:
                        self.start_daemons()
                        if self.rng.random() > STARTUP_CUTS:
                            self.run_until_started()
                        self.run_for(self.rng.uniform(*options.delay))
                        self.cut()
                        self.say(
                            f"cut {self.cut_number:>3}: {self.report.finished} of "
                            f"{len(self.recordings)} recordings arrived, "
                            f"{len(self.report.problems)} problem(s)"
                        )
                    self.finish()
                finally:
                    self.kill_daemons()
                    self.drop_writers()
                    self.disk.close()
                    self.other.close()
                    self.report.device_changes = sum(
                        len(set(d.devices)) - 1 for d in (self.disk, self.other)
                    )
        finally:
            self.report.seconds = time.monotonic() - self.started_at
        if self.report.ok and not options.keep and options.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            self.say(f"work folder kept: {work}")
        return self.report


def run_campaign(options: Options) -> Report:
    """Run one campaign; the report holds the table and the problems found."""
    return Campaign(options).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="replay this seed")
    parser.add_argument("--short", action="store_true", help="the short form (as in make test)")
    parser.add_argument("--cuts", type=int, help="number of power cuts")
    parser.add_argument("--files", type=int, help="recordings per daemon")
    parser.add_argument("--mode", choices=("strict", "ordered"), help="durability rules")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    parser.add_argument("--workdir", type=Path, help="work here (kept) instead of a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quiet", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(10**9)
    options = Options.short(seed) if args.short else Options(seed=seed)
    for name in ("cuts", "files", "mode"):
        if getattr(args, name) is not None:
            setattr(options, name, getattr(args, name))
    options.workdir, options.keep, options.verbose = args.workdir, args.keep, not args.quiet
    print(f"seed: {seed}", flush=True)
    report = run_campaign(options)
    data = {k: v for k, v in dataclasses.asdict(report).items() if k != "seen"}
    data["ok"] = report.ok
    return finish_main(report.table(), data, args.json, report.ok)


if __name__ == "__main__":
    sys.exit(main())
