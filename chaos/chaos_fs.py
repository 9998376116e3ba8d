"""The file-system part of the campaign: the disk changes under the daemon's feet.

Three phases, one for each after-upload action (``keep`` with ``keep_for``,
``move``, ``delete``), each with its own watch folder, ledger and a gentle
fake server (no faults but a late ``ready``, so that a job spends time in
every state). The daemon runs as nobody (uid 65534, no groups): it runs as
root otherwise, and root reads every file and every folder whatever its mode.

At seeded moments of each job state (``settle``, ``uploading``,
``confirming``, ``after-action``) the campaign does one of these to a video
the daemon knows:

- replaces it (``rename`` over it) by another file, by a symlink to a private
  0600 file outside the watch root that the daemon can read (like its own
  password file), by a FIFO or by a folder;
- truncates it, or appends to it;
- renames it out of the watch folder and back a moment later;
- replaces its sidecar by garbage: ``[`` * 100000 + ``]`` * 100000 as JSON or
  YAML, random bytes, or a symlink to the private file;
- makes its folder unreadable, then readable again.

"After-action" is, with ``keep``, the time between ``done`` and the
``keep_for`` expiry (the daemon is restarted once it is due, as after a
reboot); with ``move`` and ``delete``, the daemon is killed at the
``before_after_action`` failpoint, the file is changed, and the next start
finishes the action.

What the campaign accepts, the same under every action: a path replaced by a
symlink, FIFO or folder is left where it is and as it is (not deleted, not
moved, not followed); its job never becomes ``done`` after the swap (it waits,
fails or is forgotten; a job done before the swap stays done, its action not
carried out on the replacement); nothing of the private file reaches the
server, the log or the ledger; and the loop goes on (a canary dropped at the
end of the phase is uploaded). A regular file, whatever happened to it, has
its last version uploaded; and no version the campaign wrote and did not
itself overwrite is lost: it reached the server byte for byte, or it is
still in the watch folder. With ``move``, a version found only in
``move_to`` that never reached the server counts as moved away unuploaded.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import stat
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

from chaos.chaos_ledger import ledger_state, newest_jobs, sha256_file
from ingestd.failpoints import ENV_VAR
from ingestd.fake_valt import FakeValtThread, Faults
from ingestd.fake_valt.multipart import MultipartStream

KiB = 1024
MiB = 1024 * KiB
NOBODY = 65534
USERNAME = "ingest"
PASSWORD = "chaos-fs-Pass-w0rd-17"
ACTIONS = ("keep", "move", "delete")
"""One phase each; ``keep`` also has ``keep_for``."""
KEEP_FOR = 2.0
STATES = ("settle", "uploading", "confirming", "after-action")
KINDS = (
    "replace_file",
    "replace_symlink",
    "replace_fifo",
    "replace_folder",
    "truncate",
    "append",
    "rename_away",
    "garbage_sidecar",
    "unreadable_folder",
)
NON_REGULAR = {"replace_symlink": "symlink", "replace_fifo": "fifo", "replace_folder": "folder"}
GARBAGE = ("nesting_json", "nesting_yaml", "random_bytes", "symlink")
FIRST = (
    ("keep", "replace_file", "after-action"),  # keep_for deleting a never-uploaded file
    ("move", "replace_symlink", "uploading"),  # a swapped-in symlink followed
    ("delete", "garbage_sidecar", "settle"),  # with the nesting sidecar: intake stopped
)
"""Placed in every plan, so that even the short form meets the reproduced holes."""
FOLDERS = ("room-a", "room-b", "room-c/day 1")
LIVE = ("waiting", "queued", "creating", "uploading", "confirming")
MAX_ACTIONS_PER_FILE = 2


@dataclass
class FsOptions:
    """The size of the file-system part; ``short`` is the form inside ``make test``."""

    seed: int
    actions_per_phase: int = 36
    """Every kind at every state once per phase (9 x 4)."""
    files_per_phase: int = 8
    max_size: int = 3 * MiB
    bandwidth: int = 1 * MiB
    """``upload.bandwidth_limit``: uploads take a while, time to act while they run."""
    state_timeout: float = 12.0
    """Seconds to wait for a file to reach a state before that action is given up."""
    canary_timeout: float = 60.0
    settle_timeout: float = 60.0
    """Seconds at the end for every regular file's last version to be uploaded."""
    verbose: bool = True

    @classmethod
    def short(cls, seed: int) -> FsOptions:
        return cls(
            seed=seed,
            actions_per_phase=3,
            files_per_phase=2,
            max_size=512 * KiB,
            bandwidth=256 * KiB,
            state_timeout=8.0,
            canary_timeout=12.0,
            settle_timeout=8.0,
        )


@dataclass
class FsReport:
    """What the file-system part found; the campaign's table shows it."""

    actions: dict[str, int] = field(default_factory=dict)
    """``kind@state`` -> how many were done."""
    missed: dict[str, int] = field(default_factory=dict)
    """``kind@state`` -> given up: no file reached that state in time."""
    garbage: dict[str, int] = field(default_factory=dict)
    replacements: int = 0
    replacements_ok: int = 0
    private_bytes: int = 0
    private_shown: dict[str, int] = field(default_factory=dict)
    """Where else the private file's bytes turned up: log lines, the ledger, server metadata."""
    lost: int = 0
    moved_unuploaded: int = 0
    daemon_exits: int = 0
    canaries_missed: int = 0
    stale_files: int = 0
    """Regular files whose last version never reached the server."""
    foreign_records: int = 0
    internal_errors: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def stops(self) -> int:
        return self.daemon_exits + self.canaries_missed

    def add(self, name: str, by: int = 1) -> None:
        """Count into a field: the phases run at once, in threads."""
        with COUNTING:
            setattr(self, name, getattr(self, name) + by)


COUNTING = threading.Lock()


def bump(counts: dict[str, int], key: str, by: int = 1) -> None:
    with COUNTING:
        counts[key] = counts.get(key, 0) + by


@dataclass
class Version:
    """One content the campaign wrote under a name."""

    relpath: str
    phase: str
    retired: bool = False
    """Overwritten by the campaign itself (truncated, appended to, replaced)."""


@dataclass
class FsFile:
    """One video path of a phase and what the campaign did to it."""

    relpath: str
    sha256: str | None = None
    """The current version's hash; None once it is no regular file."""
    replaced_with: str | None = None
    replaced_at: float = 0.0
    garbage_sidecar: bool = False
    actions: int = 0
    busy: bool = False
    """Away or behind a locked folder right now."""
    canary: bool = False


# --- what the server received ---------------------------------------------------------------


class PrivateTap:
    """Counts the private marker in every file byte any fake server in this process takes."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.copies = 0
        self._original: Any = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = MultipartStream.stream
        tap = self

        async def stream(self: Any, sink: Callable[[memoryview], None]) -> None:
            carry = b""

            def watched(piece: memoryview) -> None:
                nonlocal carry
                data = carry + bytes(piece)
                tap.copies += data.count(tap.marker)
                carry = data[-(len(tap.marker) - 1) :]
                sink(piece)

            await original(self, watched)

        setattr(MultipartStream, "stream", stream)  # noqa: B010 - a test tap
        try:
            yield
        finally:
            setattr(MultipartStream, "stream", original)  # noqa: B010


# --- the disk, as nobody's --------------------------------------------------------------------


def give_to_nobody(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def make_folders(folder: Path, top: Path) -> None:
    """``mkdir -p`` below ``top``, each new folder nobody's, so the daemon may work there."""
    missing = []
    while not folder.exists() and folder != top:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
        give_to_nobody(path)


def random_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def hidden_sibling(path: Path, rng: random.Random) -> Path:
    """A name beside ``path`` that the daemon ignores (``exclude: [".*"]``)."""
    return path.with_name(f".swap-{rng.getrandbits(32):08x}")


# --- one phase --------------------------------------------------------------------------------


class Phase:
    """One watch folder, one ledger, one after-upload action, one daemon as nobody."""

    def __init__(
        self,
        campaign: FsCampaign,
        action: str,
        plan: list[tuple[str, str]],
        server: FakeValtThread,
    ) -> None:
        self.campaign = campaign
        self.action = action
        self.plan = plan
        self.server = server
        self.rng = random.Random(f"{campaign.options.seed}:fs:{action}")
        self.base = campaign.base / action
        self.export = self.base / "export"
        self.moved = self.base / "moved"
        self.aside = self.base / "aside"
        self.ledger = self.base / "ledger.db"
        self.log = self.base / "daemon.log"
        self.files: dict[str, FsFile] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.keep_done_at = 0.0
        # The pathological nesting first (it stopped all intake), the rest in seeded order.
        self.garbage = [GARBAGE[0], *self.rng.sample(GARBAGE[1:], len(GARBAGE) - 1)]
        self.log_offset = 0
        self.report = campaign.report

    # --- set-up and the daemon --------------------------------------------------------------

    def setup(self) -> None:
        campaign_bandwidth = self.campaign.options.bandwidth
        for folder in (self.base, self.export, self.moved, self.aside):
            folder.mkdir(mode=0o755)
            give_to_nobody(folder)
        config: dict[str, Any] = {
            "valt": {"url": self.server.url, "username": USERNAME, "timeout": 2.0},
            "watch": {
                "paths": [str(self.export)],
                "settle": "1s",
                "rescan_interval": "1s",
                "check_container": False,  # the files are random bytes
            },
            "upload": {
                "workers": 2,
                "chunk_size": 64 * KiB,
                "bandwidth_limit": campaign_bandwidth,
                "backoff_initial": "0.05s",
                "backoff_max": "1s",
            },
            "after_upload": {"action": self.action},
            "ledger": {"path": str(self.ledger)},
            "log": {"format": "json", "level": "info"},
            "status": {"listen": None},
        }
        if self.action == "move":
            config["after_upload"]["move_to"] = str(self.moved)
        if self.action == "keep":
            config["after_upload"]["keep_for"] = KEEP_FOR
        self.config = self.base / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))

    def start(self, failpoint: str | None = None) -> None:
        env = dict(os.environ)
        env["INGESTD_VALT_PASSWORD"] = PASSWORD
        env.pop(ENV_VAR, None)
        if failpoint:
            env[ENV_VAR] = failpoint
        command = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "ingestd",
            "run",
            "-c",
            str(self.config),
        ]
        with open(self.log, "ab") as handle:
            handle.write(f"=== start ({failpoint or 'no failpoint'})\n".encode())
            handle.flush()
            self.log_offset = handle.tell()
            self.process = subprocess.Popen(
                command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=self.base
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
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(30)
        self.process = None
        if code != 0:
            self.report.add("daemon_exits")
            self.problem(f"SIGTERM: the daemon exited with {code}")

    def wait_started(self, process: subprocess.Popen[bytes]) -> None:
        """Until ``daemon.started``: a SIGTERM before its handlers are set is no clean stop."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            with open(self.log, "rb") as handle:
                handle.seek(self.log_offset)
                if b'"event": "daemon.started"' in handle.read():
                    return
            time.sleep(0.05)

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
        if self.campaign.options.verbose:
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
        self.write_version(item, path, self.rng.randint(64 * KiB, self.campaign.options.max_size))
        give_to_nobody(path)
        self.files[relpath] = item
        return item

    def write_version(self, item: FsFile, path: Path, size: int) -> None:
        """Write a whole new content at ``path`` and track it."""
        with open(path, "wb") as handle:
            handle.write(random_bytes(self.rng, size))
        self.track(item, path)

    def track(self, item: FsFile, path: Path) -> None:
        if item.sha256 is not None:
            self.campaign.versions[item.sha256].retired = True
        item.sha256 = sha256_file(path)
        self.campaign.versions[item.sha256] = Version(item.relpath, self.action)

    def retire(self, item: FsFile) -> None:
        if item.sha256 is not None:
            self.campaign.versions[item.sha256].retired = True
        item.sha256 = None

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

    # --- the actions ------------------------------------------------------------------------

    def act(self, kind: str, item: FsFile) -> None:
        """Do ``kind`` to ``item`` now."""
        path = self.path(item)
        item.actions += 1
        rng = self.rng
        if kind in NON_REGULAR:
            swap = hidden_sibling(path, rng)
            if kind == "replace_symlink":
                swap.symlink_to(self.campaign.private)
            elif kind == "replace_fifo":
                os.mkfifo(swap, 0o644)
            if kind == "replace_folder":
                path.unlink()  # a folder cannot be renamed over a file
                path.mkdir(mode=0o755)
                give_to_nobody(path)
            else:
                give_to_nobody(swap)
                os.replace(swap, path)  # mv -T: the name never misses
            self.retire(item)
            item.replaced_with = NON_REGULAR[kind]
            item.replaced_at = time.time()
            self.report.add("replacements", 1)
        elif kind == "replace_file":
            swap = hidden_sibling(path, rng)
            self.write_version(item, swap, rng.randint(64 * KiB, self.campaign.options.max_size))
            give_to_nobody(swap)
            os.replace(swap, path)
        elif kind == "truncate":
            size = path.stat().st_size
            os.truncate(path, rng.randint(1, max(1, size - 1)))
            self.track(item, path)
        elif kind == "append":
            with open(path, "r+b") as handle:  # not "ab": that would make a gone file anew
                handle.seek(0, os.SEEK_END)
                handle.write(random_bytes(rng, rng.randint(1, 64 * KiB)))
            self.track(item, path)
        elif kind == "rename_away":
            away = self.aside / f"{rng.getrandbits(32):08x}.mp4"
            os.rename(path, away)
            item.busy = True
            self.pause(rng.uniform(0.5, 2.5))
            os.rename(away, path)
            item.busy = False
        elif kind == "garbage_sidecar":
            self.garbage_sidecar(item, path)
        elif kind == "unreadable_folder":
            folder = path.parent
            item.busy = True
            folder.chmod(0o000)
            self.pause(rng.uniform(1.0, 3.0))
            folder.chmod(0o755)
            item.busy = False
        else:
            raise ValueError(kind)

    def garbage_sidecar(self, item: FsFile, path: Path) -> None:
        variant = self.garbage.pop(0) if self.garbage else self.rng.choice(GARBAGE)
        bump(self.report.garbage, variant)
        json_side = path.with_name(path.name + ".json")
        target = path.with_name(path.name + (".yaml" if variant == "nesting_yaml" else ".json"))
        swap = hidden_sibling(path, self.rng)
        if variant == "symlink":
            swap.symlink_to(self.campaign.private)
        elif variant == "random_bytes":
            swap.write_bytes(random_bytes(self.rng, self.rng.randint(1, 4 * KiB)))
        else:
            swap.write_text("[" * 100000 + "]" * 100000)
        give_to_nobody(swap)
        if variant == "nesting_yaml":
            json_side.unlink(missing_ok=True)  # NAME.mp4.json would win over NAME.mp4.yaml
        os.replace(swap, target)
        item.garbage_sidecar = True

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
        deadline = time.monotonic() + self.campaign.options.state_timeout
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
        try:
            code = process.wait(self.campaign.options.state_timeout + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
            code = None
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
        deadline = time.monotonic() + self.campaign.options.state_timeout + 10
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
            self.act(kind, item)
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
        started = time.monotonic()
        self.setup()
        self.start()
        for _ in range(self.campaign.options.files_per_phase):
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
        self.check()

    def finish(self) -> None:
        """A canary must be uploaded; then every regular file's last version, given time."""
        canary = self.new_file(canary=True)
        if not self.wait(lambda: self.uploaded(canary), self.campaign.options.canary_timeout):
            self.report.add("canaries_missed", 1)
            row = self.jobs().get(str(self.path(canary)))
            self.problem(
                f"the canary was not uploaded within {self.campaign.options.canary_timeout:.0f} s"
                f": the loop stopped ({job_state(row)})"
            )
            return
        self.wait(self.settled, self.campaign.options.settle_timeout)

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
        return item.sha256 in self.campaign.server_hashes()

    def stale(self) -> list[FsFile]:
        """Regular files, their sidecar sound, whose last version is not on the server."""
        held = self.campaign.server_hashes()
        return [
            f
            for f in self.files.values()
            if f.replaced_with is None and not f.garbage_sidecar and f.sha256 not in held
        ]

    # --- checking -----------------------------------------------------------------------

    def check(self) -> None:
        report = self.report
        jobs = self.jobs()
        for item in self.stale():
            report.add("stale_files", 1)
            row = jobs.get(str(self.path(item)))
            self.problem(f"{item.relpath}: its last version never uploaded ({job_state(row)})")
        for item in self.files.values():
            if item.replaced_with is not None:
                report.add("replacements_ok", self.check_replacement(item, jobs))
        for path in walk(self.moved):
            if not stat.S_ISREG(os.lstat(path).st_mode) and not path.is_dir():
                self.problem(f"move_to holds a {kind_of(path)}: {path}")
        self.check_log()

    def check_replacement(self, item: FsFile, jobs: dict[str, dict[str, Any]]) -> bool:
        """A symlink, FIFO or folder put in place of a video: left as it is, and never done
        unless every byte had been sent before the swap."""
        path = self.path(item)
        found = kind_of(path)
        ok = True
        if found != item.replaced_with:
            self.problem(f"{item.relpath}: replaced by a {item.replaced_with}, now {found}")
            ok = False
        elif found == "symlink" and os.readlink(path) != str(self.campaign.private):
            self.problem(f"{item.relpath}: the symlink now points elsewhere")
            ok = False
        moved = [p for p in walk(self.moved) if p.name == path.name and kind_of(p) != "file"]
        if moved:
            self.problem(f"{item.relpath}: the {item.replaced_with} was moved to {moved[0]}")
            ok = False
        row = jobs.get(str(path))
        # Swapped after every byte was sent (confirming): the server holds the judged file,
        # read through descriptors that proved it, so "done" is that upload's right end (the
        # after-upload action then leaves the swapped-in thing alone). Before that, never.
        uploaded_at = None if row is None else row["uploaded_at"]
        sent_before = uploaded_at is not None and float(uploaded_at) <= item.replaced_at
        if row is not None and row["state"] == "done" and not sent_before:
            self.problem(
                f"{item.relpath}: its job became done after it was replaced by a "
                f"{item.replaced_with} (record {row['record_id']})"
            )
            ok = False
        return ok

    def check_log(self) -> None:
        bad: Counter[str] = Counter()
        text = self.log.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("Traceback"):
                bad["traceback"] += 1
            for event in ("job.internal_error", "daemon.task_failed"):
                if f'"event": "{event}"' in line:
                    bad[event] += 1
        self.report.add("internal_errors", sum(bad.values()))
        if bad:
            self.problem(f"the daemon logged {dict(bad)} (see {self.log})")


def job_state(row: dict[str, Any] | None) -> str:
    if row is None:
        return "no job"
    why = row["wait_reason"] or row["fail_reason"] or ""
    return f"job {row['id']} {row['state']}" + (f": {str(why)[:120]}" if why else "")


def kind_of(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "nothing"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "other"


def walk(top: Path) -> Iterator[Path]:
    """Every entry below ``top`` (folders too), not following symlinks."""
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            yield Path(folder) / name


# --- the whole --------------------------------------------------------------------------------


class FsCampaign:
    """The three phases against one gentle server, and the checks across them."""

    def __init__(self, options: FsOptions) -> None:
        self.options = options
        self.rng = random.Random(f"{options.seed}:fs")
        self.report = FsReport()
        self.versions: dict[str, Version] = {}
        self.marker = f"PRIVATE-{options.seed:x}-never-upload-this".encode()

    def plan(self) -> list[list[tuple[str, str]]]:
        """Each phase's (kind, state) pairs: the reproduced holes first, then the seeded rest.

        The rest takes every kind before any repeats and the states in turn: over
        36 actions every kind meets every state once (9 and 4 share no factor).
        """
        kinds, states = list(KINDS), list(STATES)
        self.rng.shuffle(kinds)
        self.rng.shuffle(states)
        per = self.options.actions_per_phase
        first = {action: [(kind, state)] for action, kind, state in FIRST}
        placed = [kind for _action, kind, _state in FIRST]
        sequence = [k for k in kinds if k not in placed] + kinds * per
        index = 0
        phases = []
        for action in ACTIONS:
            pairs: list[tuple[str, str]] = []
            while len(pairs) < per - len(first[action]):
                pairs.append((sequence[index], states[index % len(states)]))
                index += 1
            self.rng.shuffle(pairs)
            # Last in its phase: the nesting sidecar stops intake, leaving no moment after it.
            phases.append(pairs + first[action][:per])
        return phases

    def server_hashes(self) -> set[str]:
        held = set()
        for record in self.server.snapshot()["records"]:
            for video in record["videos"] or []:
                if video.get("total") is not None and video.get("received") == video["total"]:
                    held.add(video["sha256"])
        return held

    def run(self) -> FsReport:
        self.base = Path(tempfile.mkdtemp(prefix="ingestd-chaos-fs-"))
        self.base.chmod(0o755)  # pytest's tmp_path is root's alone: nobody cannot reach it
        give_to_nobody(self.base)
        self.report.workdir = str(self.base)
        private_folder = self.base / "private"
        private_folder.mkdir(mode=0o700)
        give_to_nobody(private_folder)
        self.private = private_folder / "secret.key"
        line = self.marker + b"\n"
        self.private.write_bytes(line * (64 * KiB // len(line)))
        self.private.chmod(0o600)
        give_to_nobody(self.private)
        self.private_sha = sha256_file(self.private)
        tap = PrivateTap(self.marker)
        faults = Faults(ready_delay=1.0, seed=self.options.seed)
        phases: list[Phase] = []
        try:
            with (
                FakeValtThread(
                    self.base / "server", users={USERNAME: PASSWORD}, faults=faults
                ) as server,
                tap.installed(),
            ):
                self.server = server
                # The phases share nothing but the server: run them at once.
                for action, plan in zip(ACTIONS, self.plan(), strict=True):
                    phases.append(Phase(self, action, plan, server))
                threads = [threading.Thread(target=self.run_phase, args=(p,)) for p in phases]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                self.check(phases, tap)
        finally:
            for folder, dirs, _files in os.walk(self.base):
                for name in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(folder, name), 0o755, follow_symlinks=False)
        if not self.report.problems:
            shutil.rmtree(self.base, ignore_errors=True)
        return self.report

    def run_phase(self, phase: Phase) -> None:
        try:
            phase.run()
        except Exception as exc:  # the campaign's own failure: say so, never hide it
            phase.problem(f"the campaign failed: {exc!r}")
            raise

    def check(self, phases: list[Phase], tap: PrivateTap) -> None:
        report = self.report
        held = self.server_hashes()
        report.private_bytes = tap.copies * (len(self.marker) + 1)
        if tap.copies:
            report.problems.append(
                f"the server received the private file's marker {tap.copies} time(s)"
            )
        snapshot = self.server.snapshot()
        shown = str(snapshot["records"]).encode().count(self.marker)
        if shown:
            bump(report.private_shown, "server metadata", shown)
        for phase in phases:
            texts = [phase.log, *phase.base.glob("ledger.db*")]
            texts += [p for p in walk(phase.export) if p.name.endswith(".error.txt")]
            texts += [p for p in walk(phase.moved) if p.name.endswith(".error.txt")]
            for path in texts:
                found = path.read_bytes().count(self.marker) if kind_of(path) == "file" else 0
                if found:
                    bump(report.private_shown, f"{phase.action}/{path.name}", found)
        for where, count in sorted(report.private_shown.items()):
            report.problems.append(f"the private file's bytes appear in {where} ({count} times)")
        if not self.private.exists() or sha256_file(self.private) != self.private_sha:
            report.problems.append("the private file was moved, deleted or changed")
        for record in snapshot["records"]:
            for video in record["videos"] or []:
                if video.get("sha256") in held and video["sha256"] not in self.versions:
                    report.foreign_records += 1
                    report.problems.append(
                        f"record {record['id']} ({record['name']!r}) holds bytes the campaign "
                        "never wrote (a mix of versions, a FIFO's or another file's)"
                    )
        self.check_versions(phases, held)

    def check_versions(self, phases: list[Phase], held: set[str]) -> None:
        """Every version not overwritten by the campaign: on the server or still in place."""
        report = self.report
        in_watch: set[str] = set()
        in_moved: set[str] = set()
        for phase in phases:
            for into, top in ((in_watch, phase.export), (in_moved, phase.moved)):
                into.update(sha256_file(p) for p in walk(top) if kind_of(p) == "file")
        for digest, version in self.versions.items():
            if version.retired or digest in held or digest in in_watch:
                continue
            if digest in in_moved:
                report.moved_unuploaded += 1
                what = "moved to move_to"
            else:
                report.lost += 1
                what = "deleted"
            report.problems.append(
                f"{version.phase} phase: {version.relpath}: a version never uploaded was {what} "
                f"(sha256 {digest[:12]})"
            )


def run_fs_campaign(options: FsOptions) -> FsReport:
    return FsCampaign(options).run()
