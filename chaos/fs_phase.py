"""One phase of the file-system part: a watch folder, a daemon as nobody, the planned actions.

The phase finds a file in each planned job state (``settle``, ``uploading``,
``confirming``, ``after-action``), changes it (``fs_actions``), keeps the daemon
running, and at the end drops a canary that must be uploaded.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos.fs_actions import DiskActions, give_to_nobody, kind_of, make_folders
from chaos.fs_plan import (
    FOLDERS,
    KEEP_FOR,
    MAX_ACTIONS_PER_FILE,
    NOBODY,
    PASSWORD,
    FsFile,
    FsShared,
    bump,
)
from chaos.harness import (
    LIVE,
    KiB,
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

SETPRIV = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
"""The daemon runs as nobody, no groups: as root it would read every file whatever its mode."""


class Phase:
    """One watch folder, one ledger, one after-upload action, one daemon as nobody."""

    def __init__(self, shared: FsShared, action: str, plan: list[tuple[str, str]]) -> None:
        self.shared = shared
        self.action = action
        self.plan = plan
        self.server = shared.server
        self.rng = random.Random(f"{shared.options.seed}:fs:{action}")
        self.base = shared.base / action
        self.export = self.base / "export"
        self.moved = self.base / "moved"
        self.aside = self.base / "aside"
        self.ledger = self.base / "ledger.db"
        self.log = self.base / "daemon.log"
        self.files: dict[str, FsFile] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.keep_done_at = 0.0
        self.disk = DiskActions(shared, action, self.rng, self.aside, self.pause)
        self.log_offset = 0
        self.report = shared.report

    # --- set-up and the daemon --------------------------------------------------------------

    def setup(self) -> None:
        for folder in (self.base, self.export, self.moved, self.aside):
            folder.mkdir(mode=0o755)
            give_to_nobody(folder)
        after: dict[str, Any] = {"action": self.action}
        if self.action == "move":
            after["move_to"] = str(self.moved)
        if self.action == "keep":
            after["keep_for"] = KEEP_FOR
        self.config = self.base / "config.yaml"
        write_config(
            self.config,
            self.server.url,
            self.export,
            settle="1s",
            rescan_interval="1s",
            upload={
                "chunk_size": 64 * KiB,
                "bandwidth_limit": self.shared.options.bandwidth,
                "backoff_initial": "0.05s",
                "backoff_max": "1s",
            },
            after_upload=after,
            ledger={"path": str(self.ledger)},
        )

    def start(self, failpoint: str | None = None) -> None:
        header = f"start ({failpoint or 'no failpoint'})"
        env = daemon_env(PASSWORD, failpoint)
        self.process, self.log_offset = spawn_daemon(
            self.config, self.log, header, env, self.base, prefix=SETPRIV
        )

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; any exit but 0 is the daemon's failure."""
        process = self.process
        if process is None:
            return
        if process.poll() is not None:
            self.check_alive()
            return
        self.wait_started(process)
        code = terminate(process)
        self.process = None
        if code != 0:
            self.report.add("daemon_exits")
            self.problem(f"SIGTERM: the daemon exited with {code}")

    def wait_started(self, process: subprocess.Popen[bytes]) -> None:
        """Until ``daemon.started``: a SIGTERM before its handlers are set is no clean stop."""
        wait_started(process, self.log, self.log_offset, 30, 0.05)

    def check_alive(self) -> None:
        """The daemon never exits on its own: count it, say so, and start it again."""
        process = self.process
        if process is None or process.poll() is None:
            return
        self.report.add("daemon_exits")
        self.problem(f"the daemon exited on its own with {process.returncode} (see {self.log})")
        self.start()

    def problem(self, text: str) -> None:
        self.report.problems.append(f"{self.action} phase: {text}")

    def say(self, text: str) -> None:
        if self.shared.options.verbose:
            print(f"  fs {self.action:<6} {text}", flush=True)

    def pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.05)

    # --- files --------------------------------------------------------------------------------

    def path(self, item: FsFile) -> Path:
        return self.export / item.relpath

    def new_file(self, canary: bool = False) -> FsFile:
        self.count += 1
        if canary:
            relpath = f"canary-{self.action}.mp4"
        else:
            folder = self.rng.choice(FOLDERS)
            relpath = f"{folder}/fs-{self.action}-{self.count:03d}.mp4"
        item = FsFile(relpath, canary=canary)
        path = self.path(item)
        make_folders(path.parent, self.export)
        if not canary and self.rng.random() < 0.5:
            sidecar = path.with_name(path.name + ".json")
            sidecar.write_text(f'{{"name": "fs {self.action} {self.count}"}}')
            give_to_nobody(sidecar)
        self.disk.write_version(
            item, path, self.rng.randint(64 * KiB, self.shared.options.max_size)
        )
        give_to_nobody(path)
        self.files[relpath] = item
        return item

    def eligible(self) -> list[FsFile]:
        return [
            f
            for f in self.files.values()
            if not f.canary
            and f.replaced_with is None
            and not f.busy
            and f.actions < MAX_ACTIONS_PER_FILE
            and kind_of(self.path(f)) == "file"  # not moved or deleted after its upload
        ]

    # --- finding a file in a state ----------------------------------------------------------

    def jobs(self) -> dict[str, dict[str, Any]]:
        rows, _ = ledger_state(self.ledger)
        return newest_jobs(rows)

    def in_state(self, state: str) -> FsFile | None:
        jobs = self.jobs()
        wanted = {"uploading": ("uploading",), "confirming": ("confirming",)}[state]
        found = [
            f
            for f in self.eligible()
            if (row := jobs.get(str(self.path(f)))) is not None and row["state"] in wanted
        ]
        return self.rng.choice(found) if found else None

    def work_left(self) -> bool:
        jobs = self.jobs()
        return any(
            (row := jobs.get(str(self.path(f)))) is None or row["state"] in LIVE
            for f in self.eligible()
        )

    def wait_for_state(self, state: str) -> FsFile | None:
        if self.process is not None:
            self.wait_started(self.process)  # a start as nobody can take seconds here
        deadline = time.monotonic() + self.shared.options.state_timeout
        while time.monotonic() < deadline:
            self.check_alive()
            found = self.in_state(state)
            if found is not None:
                return found
            if not self.work_left():  # every file is past that state: one more
                self.new_file()
            time.sleep(0.05)
        return None

    def after_action_target(self) -> FsFile | None:
        """A file between ``done`` and its after-upload action."""
        if self.action == "keep":
            return self.kept_target()
        self.stop()
        if not self.work_left():
            self.new_file()
        self.start("before_after_action:1")
        process = self.process
        assert process is not None
        code = wait_exit(process, self.shared.options.state_timeout + 10)
        if code is None:
            kill(process)
        self.process = None
        target = None
        if code == -signal.SIGKILL:
            jobs = self.jobs()
            for item in self.eligible():
                row = jobs.get(str(self.path(item)))
                if row is not None and row["state"] == "done" and not row["after_done"]:
                    target = item
        elif code is not None:
            self.report.add("daemon_exits")
            self.problem(f"armed at before_after_action, the daemon exited with {code}")
        return target

    def kept_target(self) -> FsFile | None:
        # A new file must pass a whole upload first: more time than for the other states.
        if self.process is not None:
            self.wait_started(self.process)
        deadline = time.monotonic() + self.shared.options.state_timeout + 10
        while time.monotonic() < deadline:
            self.check_alive()
            if not self.work_left() and not self.done_in_place():
                self.new_file()
            jobs = self.jobs()
            for item in self.eligible():
                row = jobs.get(str(self.path(item)))
                # keep_for is carried out at a start and once a minute: until then the
                # file is between done and its after-action, however old.
                if row is not None and row["state"] == "done" and not row["cleaned_at"]:
                    self.keep_done_at = float(row["done_at"])
                    return item
            time.sleep(0.05)
        return None

    def done_in_place(self) -> bool:
        jobs = self.jobs()
        return any(
            (row := jobs.get(str(self.path(f)))) is not None and row["state"] == "done"
            for f in self.eligible()
        )

    def one(self, kind: str, state: str) -> None:
        label = f"{kind}@{state}"
        if state == "settle":
            item: FsFile | None = self.new_file()
            self.pause(self.rng.uniform(0.0, 0.6))
        elif state == "after-action":
            item = self.after_action_target()
        else:
            item = self.wait_for_state(state)
        if item is None:
            bump(self.report.missed, label)
            self.say(f"{label}: no file reached {state} in time")
            if self.process is None:
                self.start()
            return
        try:
            self.disk.act(kind, item, self.path(item))
        except FileNotFoundError:  # the daemon moved or deleted it a moment ago
            bump(self.report.missed, label)
            self.say(f"{label}: {item.relpath} went away first")
            if self.process is None:
                self.start()
            return
        bump(self.report.actions, label)
        self.say(f"{label}: {item.relpath}")
        if state == "after-action" and self.action == "keep":
            # keep_for is enforced at start and every minute: restart once it is due.
            self.pause(max(0.0, self.keep_done_at + KEEP_FOR + 0.2 - time.time()))
            self.stop()
        if self.process is None:
            self.start()

    # --- the phase ----------------------------------------------------------------------

    def run(self) -> None:
        """The phase from set-up to the daemon's last stop (``fs_checks`` judges it)."""
        started = time.monotonic()
        self.setup()
        self.start()
        for _ in range(self.shared.options.files_per_phase):
            self.new_file()
        try:
            for kind, state in self.plan:
                self.one(kind, state)
            self.stop()  # a restart: housekeeping finishes actions and expires keeps
            self.start()
            self.finish()
        finally:
            if self.process is not None:
                self.stop()
            self.report.phase_seconds[self.action] = round(time.monotonic() - started, 1)

    def finish(self) -> None:
        """A canary must be uploaded; then every regular file's last version, given time."""
        canary = self.new_file(canary=True)
        if not self.wait(lambda: self.uploaded(canary), self.shared.options.canary_timeout):
            self.report.add("canaries_missed", 1)
            row = self.jobs().get(str(self.path(canary)))
            self.problem(
                f"the canary was not uploaded within {self.shared.options.canary_timeout:.0f} s"
                f": the loop stopped ({job_state(row)})"
            )
            return
        self.wait(self.settled, self.shared.options.settle_timeout)

    def settled(self) -> bool:
        """Every regular file's last version is uploaded, or the daemon is done trying."""
        stale = self.stale()
        if not stale:
            return True
        jobs = self.jobs()
        rows = [jobs.get(str(self.path(f))) for f in stale]
        return all(
            row is not None and row["state"] in ("done", "failed", "skipped") for row in rows
        )

    def wait(self, condition: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            if condition():
                return True
            time.sleep(0.2)
        return False

    def uploaded(self, item: FsFile) -> bool:
        return item.sha256 in self.shared.server_hashes()

    def stale(self) -> list[FsFile]:
        """Regular files, their sidecar sound, whose last version is not on the server."""
        held = self.shared.server_hashes()
        return [
            f
            for f in self.files.values()
            if f.replaced_with is None and not f.garbage_sidecar and f.sha256 not in held
        ]


def job_state(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no job"
    why = row["wait_reason"] or row["fail_reason"] or ""
    return f"job {row['id']} {row['state']}" + (f": {str(why)[:120]}" if why else "")
