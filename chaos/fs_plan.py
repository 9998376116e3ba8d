"""The file-system part's plan and figures: what is done to the disk, when, and what was found."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from chaos.harness import KiB, MiB, whole
from ingestd.fake_valt import FakeValtThread

NOBODY = 65534
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


def plan_phases(rng: random.Random, per: int) -> list[list[tuple[str, str]]]:
    """Each phase's (kind, state) pairs: the reproduced holes first, then the seeded rest.

    The rest takes every kind before any repeats and the states in turn: over
    36 actions every kind meets every state once (9 and 4 share no factor).
    """
    kinds, states = list(KINDS), list(STATES)
    rng.shuffle(kinds)
    rng.shuffle(states)
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
        rng.shuffle(pairs)
        # Last in its phase: the nesting sidecar stops intake, leaving no moment after it.
        phases.append(pairs + first[action][:per])
    return phases


@dataclass
class FsShared:
    """What the three phases share: the options, the report, the server, the private file."""

    options: FsOptions
    base: Path
    report: FsReport
    server: FakeValtThread
    private: Path
    versions: dict[str, Version] = field(default_factory=dict)

    def server_hashes(self) -> set[str]:
        """The sha256 of every video the server holds whole."""
        held = set()
        for record in self.server.snapshot()["records"]:
            for video in record["videos"] or []:
                if whole(video):
                    held.add(video["sha256"])
        return held
