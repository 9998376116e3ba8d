"""The shared-ledger campaign's plan: its options, the seeded files (a few of them copies of
others) and the moments of its faults (node kills, the PostgreSQL kill, the cut-off)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from chaos.harness import MiB, random_size
from chaos.plan import EXTENSIONS, FOLDERS, FileSpec

WATCH_NAME = "export"
"""The share's name in every node's ``watch.paths``: the ledger knows files by it."""


@dataclass
class SharedOptions:
    """What one shared-ledger campaign does; the defaults are the long form (``make chaos``)."""

    seed: int
    nodes: int = 3
    files: int = 100
    """Files in all, the copies among them."""
    duplicates: int = 8
    """Files holding the same bytes as another file (under another name)."""
    kills: int = 60
    """SIGKILLs of a node, at random moments."""
    minutes: float = 6.0
    """How long files arrive and faults happen; then every node runs until all is done."""
    max_size: int = 40 * MiB
    slow_files: float = 0.15
    """Fraction of files written slowly while the nodes run."""
    lease: float = 5.0
    """``ledger.lease`` of every node, in seconds."""
    bandwidth: str = "4MB"
    """Each node's ``upload.bandwidth_limit``: a long upload outlasts a lease, as on a real
    link (on loopback a file is sent before any fault can find it under way)."""
    restart_pause: tuple[float, float] = (0.3, 3.0)
    """Seconds a killed node stays down."""
    pg_down: tuple[float, float] = (1.0, 5.0)
    """Seconds PostgreSQL stays down after its SIGKILL."""
    cut_leases: tuple[float, float] = (1.5, 3.0)
    """The cut-off's length, in leases (always more than one)."""
    cut_wait: float = 15.0
    """Seconds the cut-off may wait for a node to hold a job under way (then it comes
    anyway); meanwhile the next files arrive early."""
    final_timeout: float = 300.0
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = True

    @classmethod
    def short(cls, seed: int) -> SharedOptions:
        """The short form inside ``make test``: 12 small files, 3 kills, both outages."""
        return cls(
            seed=seed,
            files=12,
            duplicates=2,
            kills=3,
            minutes=0.4,
            max_size=3 * MiB,
            slow_files=0.2,
            bandwidth="2MB",
            restart_pause=(0.3, 1.5),
            pg_down=(1.0, 2.0),
            cut_leases=(1.4, 1.6),
            cut_wait=8.0,
            final_timeout=60.0,
        )

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def node_names(self) -> tuple[str, ...]:
        if not 2 <= self.nodes <= 26:
            raise ValueError("--nodes: 2 to 26")
        return tuple(chr(ord("a") + n) for n in range(self.nodes))


@dataclass
class SharedFile(FileSpec):
    """One source file on the share; ``appear_at``: seconds into the campaign."""

    appear_at: float = 0.0
    copy_of: str | None = None
    """The file whose bytes this one holds (None: its bytes are its own)."""


@dataclass
class FaultPlan:
    """When each fault comes, in seconds from the start of the campaign."""

    kill_at: list[float] = field(default_factory=list)
    pg_kill_at: float = 0.0
    pg_down_for: float = 0.0
    cut_at: float = 0.0
    """The earliest moment; the node is the one found sending then (or busy otherwise)."""
    cut_for: float = 0.0


def plan_files(options: SharedOptions, rng: random.Random) -> list[SharedFile]:
    """The seeded mix: a backlog at the start, the rest arriving over the campaign; then the
    copies, each of a file written at once, half arriving with it and half later."""
    originals = max(1, options.files - options.duplicates)
    backlog = max(2, originals // 5)
    window = 0.8 * options.seconds
    tag = f"s{options.seed % 100000:05d}"
    specs: list[SharedFile] = []
    for index in range(originals):
        slow = index >= backlog and rng.random() < options.slow_files
        size = random_size(rng, min(options.max_size, 8 * MiB) if slow else options.max_size)
        appear = 0.0 if index < backlog else rng.uniform(0, window)
        name = f"{tag}-{index:03d}{'-slow' if slow else ''}{rng.choice(EXTENSIONS)}"
        relpath = str(Path(rng.choice(FOLDERS)) / name)
        specs.append(SharedFile(index, relpath, size, slow, 0, appear_at=appear))
    fast = [spec for spec in specs if not spec.slow]
    for number in range(min(options.duplicates, options.files - originals)):
        source = rng.choice(fast)
        later = number % 2 == 1
        appear = source.appear_at + (rng.uniform(2, 20) if later else rng.uniform(0, 0.3))
        name = f"{tag}-{source.index:03d}-copy{number}{rng.choice(EXTENSIONS)}"
        relpath = str(Path(rng.choice(FOLDERS)) / name)
        copy = SharedFile(source.index, relpath, source.size, False, 0, copy_of=source.relpath)
        copy.appear_at = min(appear, window)
        specs.append(copy)
    return sorted(specs, key=lambda spec: spec.appear_at)


def plan_faults(options: SharedOptions, rng: random.Random) -> FaultPlan:
    """The kills spread over the campaign; PostgreSQL killed in its first third, the
    cut-off in its middle, one after the other."""
    length = options.seconds
    plan = FaultPlan()
    plan.kill_at = sorted(rng.uniform(0.05, 0.95) * length for _ in range(options.kills))
    plan.pg_kill_at = rng.uniform(0.2, 0.33) * length
    plan.pg_down_for = rng.uniform(*options.pg_down)
    plan.cut_at = max(plan.pg_kill_at + plan.pg_down_for + 2, rng.uniform(0.42, 0.5) * length)
    plan.cut_for = rng.uniform(*options.cut_leases) * options.lease
    return plan


def extra_file(options: SharedOptions, rng: random.Random, index: int, at: float) -> SharedFile:
    """One more file, beyond the plan, when the cut-off waits for work."""
    name = f"s{options.seed % 100000:05d}-{index:03d}-extra.mp4"
    return SharedFile(index, name, random_size(rng, options.max_size), False, 0, appear_at=at)


def groups(specs: list[SharedFile]) -> dict[int, list[SharedFile]]:
    """Files by content: a file and its copies share a group (the seeded bytes' index)."""
    found: dict[int, list[SharedFile]] = {}
    for spec in specs:
        found.setdefault(spec.index, []).append(spec)
    return found


def ledger_path(spec: FileSpec) -> str:
    """The file's path as the shared ledger stores it (``NAME/relative``)."""
    return f"{WATCH_NAME}/{spec.relpath}"
