"""The power-cut campaign's rig: the server, two volumes, three daemons and the recorders.

Everything that runs between the cuts: setting up the stations, starting the daemons
and killing or stopping them, writing the recordings (durably, as a recorder that
cares does), and what a cut does to the recorders and the backups.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from chaos.harness import (
    PASSWORD,
    ServerEvents,
    daemon_env,
    reap,
    spawn_daemon,
    write_config,
)
from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.backup import BACKUP_INFIX, backup_time
from powercut.control import PowerCutMount, mount
from powercut.plan import (
    ACTIONS,
    BACKUPS,
    CHUNK_SIZES,
    DAY,
    STARTUP_TIMEOUT,
    Options,
    Recording,
    Station,
    fsync_path,
    make_dirs,
    plan_recordings,
)
from powercut.report import Report


class Rig:
    """The server, the mount, three daemons, the recordings and the plan of cuts."""

    server: FakeValtThread

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.started_at = time.monotonic()
        started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.report = Report(seed=options.seed, mode=options.mode, started=started)
        self.events = ServerEvents()
        self.cut_number = 0
        self.recordings = plan_recordings(options, self.rng)
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
        write_config(
            station.config,
            self.server.url,
            station.export,
            settle="0.4s",
            rescan_interval="1s",
            upload={
                "chunk_size": self.rng.choice(CHUNK_SIZES),
                "backoff_initial": "0.05s",
                "backoff_max": "0.5s",
            },
            after_upload=after,
            ledger={"path": str(station.ledger), "backups": BACKUPS},
        )

    # --- the daemons ----------------------------------------------------------------

    def start_daemons(self) -> None:
        env = daemon_env(PASSWORD)
        for station in self.stations.values():
            self.write_config(station)
            station.process, station.log_offset = spawn_daemon(
                station.config,
                station.log,
                f"start after cut {self.cut_number}",
                env,
                self.work,
                stdin=subprocess.DEVNULL,
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
            code = reap(station.process)
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
