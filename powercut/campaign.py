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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from chaos.harness import (
    CLIENT_TIMEOUT,
    FAULTS,
    PASSWORD,
    USERNAME,
    ServerEvents,
    ledger_state,
    newest_jobs,
)
from chaos.harness import content as _content
from chaos.harness import random_size as _size
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.ledger.backup import BACKUP_INFIX, backup_time
from powercut.control import PowerCutMount, mount

KiB = 1024
MiB = 1024 * KiB
ACTIONS = ("keep", "move", "delete")
STYLES = ("fast", "slow", "part")
CHUNK_SIZES = (0, 64 * KiB, 256 * KiB, 1 * MiB)
TEMPORARY = (".tmp", ".part", ".partial")
DAY = 24 * 3600
STARTUP_CUTS = 0.15
"""The share of cuts that come while the daemons start (before ``daemon.started``)."""
STARTUP_TIMEOUT = 60.0
BACKUPS = 2
"""``ledger.backups``: backups are aged by a day now and then, so rotations happen."""


@dataclass
class Options:
    """What one campaign does; the defaults are the long form (``make power``)."""

    seed: int
    cuts: int = 300
    files: int = 25  # recordings per daemon
    max_size: int = 6 * MiB
    delay: tuple[float, float] = (0.4, 4.0)
    final_timeout: float = 300.0
    mode: str = "strict"
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = True

    @classmethod
    def short(cls, seed: int) -> Options:
        """The short form inside ``make test``: a few small recordings, a few dozen cuts."""
        return cls(seed=seed, cuts=20, files=4, max_size=384 * KiB, delay=(0.3, 1.6))


@dataclass
class Recording:
    """One recording that arrives in a daemon's watch folder."""

    action: str
    index: int
    relpath: str
    size: int
    style: str
    appear_cut: int
    data: bytes = b""
    sha256: str = ""
    finished: bool = False
    broken_sidecar: bool = False
    """Its ``NAME.json`` is not JSON: the job fails for good and goes to ``failed_to``."""
    handle: IO[bytes] | None = None
    written: int = 0

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem


@dataclass
class Station:
    """One daemon with its folders on the test file system."""

    action: str
    root: Path
    config: Path
    log: Path
    aside: Path
    """Where ``move_to`` and ``failed_to`` are: the same file system, or the other one."""
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0

    def started(self) -> bool:
        """Whether the daemon started last has logged ``daemon.started``."""
        with open(self.log, "rb") as log:
            log.seek(self.log_offset)
            return b'"daemon.started"' in log.read()

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def moved(self) -> Path:
        return self.aside / "moved"

    @property
    def failed(self) -> Path:
        return self.aside / "failed"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger" / "ledger.db"


@dataclass
class Report:
    """The campaign's figures and the invariants that failed."""

    seed: int
    mode: str
    started: str
    cuts: int = 0
    cuts_per_state: dict[str, int] = field(default_factory=dict)
    recordings: int = 0
    finished: int = 0
    restarted_arrivals: int = 0
    recordings_lost: int = 0
    duplicates: int = 0
    ledger_damage: int = 0
    truncated_final: int = 0
    done_incomplete: int = 0
    partial_records_left: int = 0
    actions_undone: int = 0
    failed_not_set_aside: int = 0
    rotations_undone: int = 0
    backups_aged: int = 0
    daemon_exits: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    device_changes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set, repr=False)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def flag(self, counter: str, key: str, text: str) -> None:
        """Count one case of a broken invariant once, however many cuts find it again."""
        if key in self.seen:
            return
        self.seen.add(key)
        setattr(self, counter, getattr(self, counter) + 1)
        self.problems.append(text)

    def table(self) -> str:
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.cuts_per_state.items())) or "-"
        rows = [
            ("seed, durability mode", f"{self.seed}, {self.mode}"),
            ("date, duration", f"{self.started}, {self.seconds / 60:.1f} min"),
            ("power cuts", str(self.cuts)),
            ("jobs per state at the cuts (as the disk kept them)", states),
            (
                "recordings (finished arriving; started over after a cut)",
                f"{self.recordings} ({self.finished}; {self.restarted_arrivals})",
            ),
            ("backups aged by a day (a new one and a rotation due)", str(self.backups_aged)),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))),
            ("recordings lost (must be 0)", str(self.recordings_lost)),
            ("duplicates: two records for one recording (must be 0)", str(self.duplicates)),
            ("ledger damage (must be 0)", str(self.ledger_damage)),
            ("truncated files under final names (must be 0)", str(self.truncated_final)),
            ("done jobs whose server copy is incomplete (must be 0)", str(self.done_incomplete)),
            ("partial records left at the end (must be 0)", str(self.partial_records_left)),
            (
                "after-upload actions the ledger holds and the disk lost (must be 0)",
                str(self.actions_undone),
            ),
            (
                "failed recordings never set aside to failed_to (must be 0)",
                str(self.failed_not_set_aside),
            ),
            (
                "ledgers with more backups than ledger.backups (must be 0)",
                str(self.rotations_undone),
            ),
            ("daemons that exited by themselves (must be 0)", str(self.daemon_exits)),
            (
                "remounts with another st_dev (another mount took the number; files look new)",
                str(self.device_changes),
            ),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"| {'':<{width}} | |", f"| {'-' * width} | --- |"]
        lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
        lines += [f"problem: {p}" for p in self.problems[:60]]
        if len(self.problems) > 60:
            lines.append(f"... and {len(self.problems) - 60} more")
        return "\n".join(lines)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def make_dirs(path: Path, top: Path) -> None:
    """``mkdir -p`` that makes each new folder durable (the parent's fsync)."""
    missing = []
    folder = path
    while folder != top and not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        fsync_path(folder.parent)


class Campaign:
    """The server, the mount, three daemons, the recordings and the plan of cuts."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.started_at = time.monotonic()
        started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.report = Report(seed=options.seed, mode=options.mode, started=started)
        self.events = ServerEvents()
        self.cut_number = 0
        self.recordings: list[Recording] = []
        for number, action in enumerate(ACTIONS):
            for index in range(options.files):
                style = self.rng.choice(STYLES)
                folder = self.rng.choice(("", "room-1"))
                name = f"p{options.seed % 10000:04d}-{action}-{index:02d}-{style}.mp4"
                appear = 0 if index == 0 else self.rng.randint(0, max(1, options.cuts * 3 // 4))
                size = _size(self.rng, options.max_size)
                rec = Recording(
                    action, number * 1000 + index, str(Path(folder) / name), size, style, appear
                )
                rec.broken_sidecar = index == 1
                rec.data = b"".join(_content(options.seed, rec.index, 0, size))
                rec.sha256 = hashlib.sha256(rec.data).hexdigest()
                self.recordings.append(rec)
        self.report.recordings = len(self.recordings)

    def say(self, text: str) -> None:
        if self.options.verbose:
            print(text, flush=True)

    # --- set-up -------------------------------------------------------------------

    def setup(self, work: Path) -> None:
        self.work = work
        # The move daemon's move_to and failed_to are on a second volume (a move across file
        # systems is a copy); the others set failed files aside on their own volume (a rename).
        self.disk: PowerCutMount = mount(work / "backing", work / "mnt", self.options.mode)
        self.other: PowerCutMount = mount(work / "backing2", work / "mnt2", self.options.mode)
        self.stations: dict[str, Station] = {}
        for action in ACTIONS:
            root = self.disk.mountpoint / action
            volume = self.other if action == "move" else self.disk
            aside = volume.mountpoint / action
            station = Station(action, root, work / f"{action}.yaml", work / f"{action}.log", aside)
            for folder in (station.export, station.ledger.parent):
                make_dirs(folder, self.disk.mountpoint)
            for folder in (station.moved, station.failed):
                make_dirs(folder, volume.mountpoint)
            self.stations[action] = station

    def write_config(self, station: Station) -> None:
        after: dict[str, Any] = {"action": station.action, "failed_to": str(station.failed)}
        if station.action == "keep":
            after["keep_for"] = "2s"
        if station.action == "move":
            after["move_to"] = str(station.moved)
        config = {
            "valt": {"url": self.server.url, "username": USERNAME, "timeout": CLIENT_TIMEOUT},
            "watch": {
                "paths": [str(station.export)],
                "settle": "0.4s",
                "rescan_interval": "1s",
                "check_container": False,  # the recordings are random bytes
            },
            "upload": {
                "workers": 2,
                "chunk_size": self.rng.choice(CHUNK_SIZES),
                "backoff_initial": "0.05s",
                "backoff_max": "0.5s",
            },
            "after_upload": after,
            "ledger": {"path": str(station.ledger), "backups": BACKUPS},
            "log": {"format": "json", "level": "info"},
            "status": {"listen": None},
        }
        station.config.write_text(yaml.safe_dump(config))

    # --- the daemons ----------------------------------------------------------------

    def start_daemons(self) -> None:
        env = dict(os.environ)
        env["INGESTD_VALT_PASSWORD"] = PASSWORD
        env.pop("INGESTD_FAILPOINTS", None)
        for station in self.stations.values():
            self.write_config(station)
            with open(station.log, "ab") as log:
                log.write(f"=== start after cut {self.cut_number}\n".encode())
                log.flush()
                station.log_offset = log.tell()
                station.process = subprocess.Popen(
                    [sys.executable, "-m", "ingestd", "run", "-c", str(station.config)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.work,
                )

    def kill_daemons(self) -> None:
        for station in self.stations.values():
            process = station.process
            if process is None:
                continue
            if process.poll() is not None:
                self.report.daemon_exits += 1
                self.report.problem(
                    f"{station.action}: the daemon exited by itself with {process.returncode} "
                    f"after cut {self.cut_number}: {self.last_log_line(station)}"
                )
            else:
                process.send_signal(signal.SIGKILL)
        for station in self.stations.values():
            if station.process is not None:
                station.process.wait(60)
                station.process = None

    def stop_daemons(self) -> None:
        """A clean stop (SIGTERM), as at the end of the campaign."""
        for station in self.stations.values():
            if station.process is not None and station.process.poll() is None:
                station.process.send_signal(signal.SIGTERM)
        for station in self.stations.values():
            if station.process is None:
                continue
            try:
                code = station.process.wait(60)
            except subprocess.TimeoutExpired:
                station.process.kill()
                code = station.process.wait(30)
            if code != 0:
                self.report.problem(f"{station.action}: SIGTERM ended the daemon with {code}")
            station.process = None

    @staticmethod
    def last_log_line(station: Station) -> str:
        lines = station.log.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "(no log)"

    # --- the recorders --------------------------------------------------------------

    def due(self) -> list[Recording]:
        return [r for r in self.recordings if not r.finished and r.appear_cut <= self.cut_number]

    def write_step(self, rec: Recording) -> None:
        """One piece of a recording; the last one is followed by the fsyncs that finish it."""
        export = self.stations[rec.action].export
        final = export / rec.relpath
        target = final.with_name(final.name + ".part") if rec.style == "part" else final
        if rec.handle is None:
            make_dirs(final.parent, export)
            if rec.broken_sidecar:
                sidecar = final.with_name(final.name + ".json")
                with open(sidecar, "wb") as handle:
                    handle.write(b'{"name": "half a sidecar')
                    os.fsync(handle.fileno())
                fsync_path(final.parent)
            rec.handle = open(target, "wb")  # noqa: SIM115 - held open across steps
            rec.written = 0
        piece = rec.size if rec.style == "fast" else max(1, rec.size // self.rng.randint(3, 8))
        chunk = rec.data[rec.written : rec.written + piece]
        rec.handle.write(chunk)
        rec.handle.flush()
        rec.written += len(chunk)
        if rec.written < rec.size:
            return
        os.fsync(rec.handle.fileno())
        rec.handle.close()
        rec.handle = None
        if rec.style == "part":
            os.rename(target, final)
        fsync_path(final.parent)
        rec.finished = True
        self.report.finished += 1

    def drop_writers(self) -> list[Recording]:
        """The power goes: every recording being written is abandoned (closed, not synced)."""
        dropped = []
        for rec in self.recordings:
            if rec.handle is not None:
                rec.handle.close()
                rec.handle = None
                dropped.append(rec)
        return dropped

    def start_over(self, dropped: list[Recording]) -> None:
        """After a cut, a recorder removes what is left of an unfinished recording."""
        for rec in dropped:
            final = self.stations[rec.action].export / rec.relpath
            for path in (final, final.with_name(final.name + ".part")):
                if path.exists():
                    path.unlink()
                    fsync_path(path.parent)
            self.report.restarted_arrivals += 1

    def run_for(self, seconds: float) -> None:
        """Let the daemons work while recordings arrive, for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            for rec in self.due():
                self.write_step(rec)
            for station in self.stations.values():
                if station.process is not None and station.process.poll() is not None:
                    return  # checked (and reported) at the cut
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.rng.uniform(0.1, 0.3)))

    def run_until_started(self) -> None:
        """Recordings go on arriving while the daemons start (slowly on a busy machine)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if all(s.started() or s.process is None for s in self.stations.values()):
                return
            self.run_for(0.2)
        self.report.problem(f"cut {self.cut_number}: a daemon did not start in time")

    # --- the power cut ----------------------------------------------------------------

    def cut(self) -> None:
        self.kill_daemons()
        dropped = self.drop_writers()
        self.disk.cut()
        self.other.cut()
        self.cut_number += 1
        self.report.cuts += 1
        self.check(final=False)
        self.start_over(dropped)
        self.age_backups()

    def age_backups(self) -> None:
        """Now and then a day passes: the newest backup is renamed a day older."""
        for station in self.stations.values():
            if self.rng.random() > 0.3:
                continue
            backups = self.backups(station)
            if not backups:
                continue
            newest = backups[-1]
            when = backup_time(newest)
            assert when is not None
            stamp = dt.datetime.fromtimestamp(when - DAY - 1, dt.UTC).strftime("%Y%m%d-%H%M%S")
            older = newest.with_name(station.ledger.name + BACKUP_INFIX + stamp)
            if older.exists():
                continue
            os.rename(newest, older)
            fsync_path(newest.parent)
            self.report.backups_aged += 1

    @staticmethod
    def backups(station: Station) -> list[Path]:
        folder = station.ledger.parent
        prefix = station.ledger.name + BACKUP_INFIX
        names = sorted(n for n in os.listdir(folder) if n.startswith(prefix))
        return [folder / n for n in names if backup_time(folder / n) is not None]

    # --- checking ---------------------------------------------------------------------

    def check(self, *, final: bool) -> None:
        snapshot = self.server.snapshot()
        records = snapshot["records"]
        by_id = {r["id"]: r for r in records}
        for station in self.stations.values():
            rows = self.check_ledger(station)
            self.check_backups(station)
            complete = self.check_files(station)
            newest = newest_jobs(rows)
            if not final and rows:
                for row in newest.values():
                    state = row["state"]
                    if state == "done" and not row["after_done"]:
                        state = "done, action pending"
                    self.report.cuts_per_state[state] = self.report.cuts_per_state.get(state, 0) + 1
            for row in rows:
                if row["state"] == "done":
                    self.check_done(station, row, by_id.get(row["record_id"]))
                if row["state"] in ("done", "failed"):
                    self.check_action(station, row)
            for rec in self.recordings:
                if rec.action == station.action and rec.finished:
                    self.check_recording(station, rec, complete, records)
        overlaps = self.events.overlaps()
        if overlaps:
            self.report.duplicates = len(overlaps)
            for name, most in sorted(overlaps.items()):
                self.report.problem(f"{name}: {most} records at one moment")

    def check_ledger(self, station: Station) -> list[dict[str, Any]]:
        """The ledger opens and passes quick_check (what the daemon's next open would do)."""
        path = station.ledger
        if not path.exists():
            if self.backups(station):
                self.report.flag(
                    "ledger_damage",
                    f"ledger-gone:{station.action}",
                    f"{station.action}: cut {self.cut_number}: the ledger is gone, its backups "
                    "are not (the daemon refuses to start)",
                )
            return []
        try:
            conn = sqlite3.connect(path, timeout=10)
            try:
                verdict = [r[0] for r in conn.execute("PRAGMA quick_check")]
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if "no such table" in str(exc):
                return []
            verdict, rows = [str(exc)], []
        if verdict != ["ok"]:
            self.report.flag(
                "ledger_damage",
                f"ledger:{station.action}:{verdict[:1]}",
                f"{station.action}: cut {self.cut_number}: the ledger fails: {verdict[:2]}",
            )
        return rows

    def check_backups(self, station: Station) -> None:
        backups = self.backups(station)
        if len(backups) > BACKUPS + 1:  # one more: a cut between a backup and its rotation
            self.report.flag(
                "rotations_undone",
                f"rotation:{station.action}",
                f"{station.action}: cut {self.cut_number}: {len(backups)} backups on disk, "
                f"ledger.backups is {BACKUPS} (the rotation's deletions were not durable)",
            )
        for backup in backups:
            try:
                conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
                try:
                    verdict = [r[0] for r in conn.execute("PRAGMA quick_check")]
                    conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                verdict = [str(exc)]
            if verdict != ["ok"]:
                self.report.flag(
                    "truncated_final",
                    f"file:{backup}",
                    f"{station.action}: cut {self.cut_number}: backup {backup.name} under its "
                    f"final name is not whole ({verdict[0]}; {backup.stat().st_size} bytes)",
                )

    def check_files(self, station: Station) -> dict[str, list[Path]]:
        """Complete recordings by sha256 -> where; half-written files under final names."""
        shas = {r.sha256 for r in self.recordings if r.action == station.action}
        complete: dict[str, list[Path]] = {}
        for top in (station.export, station.moved, station.failed):
            for folder, _, names in os.walk(top):
                for name in names:
                    path = Path(folder) / name
                    if name.startswith(".") or name.endswith(TEMPORARY):
                        continue  # a temporary name: not a final one
                    if name.endswith(".json"):
                        continue  # a sidecar, travelling with its video
                    if name.endswith(".error.txt"):
                        text = path.read_text(errors="replace")
                        if "To try again" not in text or not text.endswith("\n"):
                            self.report.flag(
                                "truncated_final",
                                f"file:{path}",
                                f"cut {self.cut_number}: {path} is not whole ({len(text)} bytes)",
                            )
                        continue
                    sha = sha256_of(path)
                    if sha in shas:
                        complete.setdefault(sha, []).append(path)
                    elif top != station.export:
                        self.report.flag(
                            "truncated_final",
                            f"file:{path}",
                            f"cut {self.cut_number}: {path} is no complete recording "
                            f"({path.stat().st_size} bytes)",
                        )
        return complete

    def check_done(self, station: Station, row: dict[str, Any], record: Any) -> None:
        video = (record["videos"] or [{}])[0] if record else {}
        whole = video.get("total") is not None and video.get("received") == video.get("total")
        if not whole or video.get("sha256") != row["sha256"]:
            self.report.flag(
                "done_incomplete",
                f"done:{station.action}:{row['id']}",
                f"{station.action}: cut {self.cut_number}: job {row['id']} ({row['path']}) is "
                f"done but the server holds {video.get('received')} of {video.get('total')} bytes",
            )

    def check_action(self, station: Station, row: dict[str, Any]) -> None:
        """What the ledger says the after-upload action did is what the disk shows."""
        source, final = Path(row["path"]), row["final_path"]
        wrong = ""
        if row["state"] == "failed" and final:
            if sha256_of(Path(final)) is None:
                wrong = f"set aside to {final} by the ledger, not there on disk"
            elif source.exists():
                wrong = f"set aside to {final}, yet the source is back in the watch folder"
        elif not row["after_done"]:
            return
        elif station.action == "move" and final:
            if sha256_of(Path(final)) != row["sha256"]:
                wrong = f"moved to {final} by the ledger, not there on disk"
            elif source.exists():
                wrong = f"moved to {final}, yet the source is back in the watch folder"
        elif (station.action == "delete" or row["cleaned_at"]) and source.exists():
            what = "deleted" if station.action == "delete" else "expired (keep_for)"
            wrong = f"{what} by the ledger, back in the watch folder"
        if wrong:
            text = f"{station.action}: cut {self.cut_number}: {source.name}: {wrong}"
            self.report.flag("actions_undone", f"action:{row['id']}:{station.action}", text)

    def check_recording(
        self,
        station: Station,
        rec: Recording,
        complete: dict[str, list[Path]],
        records: list[dict[str, Any]],
    ) -> None:
        if complete.get(rec.sha256):
            return
        for record in records:
            video = (record["videos"] or [{}])[0]
            ready = video.get("status") == "ready" and video.get("sha256") == rec.sha256
            if record["name"] == rec.stem and ready:
                return
        key = f"{rec.action}/{rec.relpath}"
        self.report.flag(
            "recordings_lost",
            f"lost:{key}",
            f"cut {self.cut_number}: {key} ({rec.size} bytes) finished arriving, and now is "
            "in no complete copy: not in the watch folder, not in move_to, not ready on the server",
        )

    def check_end(self) -> None:
        """After the last cut: one complete record each, every job done, its action taken."""
        snapshot = self.server.snapshot()
        self.report.faults = dict(snapshot["faults_injected"])
        by_name: dict[str, list[dict[str, Any]]] = {}
        for record in snapshot["records"]:
            by_name.setdefault(record["name"], []).append(record)
            video = (record["videos"] or [{}])[0]
            if video.get("received") != video.get("total") or video.get("status") != "ready":
                self.report.partial_records_left += 1
                self.report.problem(f"record {record['id']} ({record['name']}) is left partial")
        for rec in self.recordings:
            mine = by_name.get(rec.stem, [])
            if len(mine) > 1:
                self.report.duplicates += 1
                self.report.problem(f"{rec.action}/{rec.relpath}: {len(mine)} records")
        for station in self.stations.values():
            rows, pending = ledger_state(station.ledger)
            if pending:
                self.report.problem(f"{station.action}: {pending} partial record(s) not deleted")
            newest = newest_jobs(rows)
            for rec in self.recordings:
                if rec.action != station.action:
                    continue
                row = newest.get(str(station.export / rec.relpath))
                if not self.settled(rec, row):
                    state = row["state"] if row else "no job"
                    self.report.problem(f"{station.action}/{rec.relpath}: not finished: {state}")
                elif row is not None and row["state"] == "skipped":
                    self.report.problem(
                        f"{station.action}/{rec.relpath}: came back after its action and was "
                        "skipped as a duplicate of its own upload"
                    )
                elif rec.broken_sidecar and not row["final_path"]:  # type: ignore[index]
                    self.report.flag(
                        "failed_not_set_aside",
                        f"aside:{rec.relpath}",
                        f"{station.action}/{rec.relpath}: failed, never moved to failed_to",
                    )

    # --- the whole --------------------------------------------------------------------

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
            if all(r.finished for r in self.recordings) and self.all_done():
                break
        else:
            self.report.problem(f"not all done within {self.options.final_timeout:.0f} s")
        self.stop_daemons()
        self.disk.cut()  # a power cut after a clean stop: all that was claimed must be on disk
        self.other.cut()
        self.report.cuts += 1
        self.cut_number += 1
        self.check(final=False)
        self.check_end()

    def all_done(self) -> bool:
        for station in self.stations.values():
            rows, pending = ledger_state(station.ledger)
            newest = newest_jobs(rows)
            for rec in self.recordings:
                if rec.action != station.action:
                    continue
                if not self.settled(rec, newest.get(str(station.export / rec.relpath))):
                    return False
            if pending:
                return False
        return True

    @staticmethod
    def settled(rec: Recording, row: dict[str, Any] | None) -> bool:
        """Done with its action taken; or, with a broken sidecar, failed."""
        if row is None:
            return False
        if rec.broken_sidecar:
            return bool(row["state"] == "failed")
        # skipped: a file whose deletion a cut undid came back and matched its own upload
        return bool(row["state"] == "skipped" or (row["state"] == "done" and row["after_done"]))

    def run(self) -> Report:
        options = self.options
        work = options.workdir or Path(tempfile.mkdtemp(prefix="ingestd-power-"))
        work.mkdir(parents=True, exist_ok=True)
        self.report.workdir = str(work)
        self.say(f"ingestd power-cut campaign: seed {options.seed}, {options.mode} mode")
        faults = Faults(**FAULTS, seed=options.seed)
        try:
            with FakeValtThread(
                work / "server", users={USERNAME: PASSWORD}, faults=faults
            ) as server:
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
    print()
    print(report.table())
    if args.json:
        data = {k: v for k, v in dataclasses.asdict(report).items() if k != "seen"}
        data["ok"] = report.ok
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
