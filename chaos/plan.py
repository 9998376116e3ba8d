"""The crash campaign's plan: its options, the seeded files, and the writers that make them."""

from __future__ import annotations

import functools
import hashlib
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaos.fs_plan import FsOptions
from chaos.harness import KiB, MiB, NamedFile, content, random_size, sha256_file
from ingestd.failpoints import FAILPOINTS

CHUNK_SIZES = (0, 64 * KiB, 128 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
"""``upload.chunk_size`` of a run, drawn anew at every start (0: the whole file at once)."""
EXTENSIONS = (".mp4", ".mov", ".MP4", ".mkv", ".ts")
FOLDERS = ("", "", "room-1", "room-2", "room-2/day 2")
MAX_CHANGES = 2
"""Times one file may be appended to while its upload is under way."""


@dataclass
class Options:
    """What one campaign does; the defaults are the long form (``make chaos``)."""

    seed: int
    files: int = 100
    kills_per_failpoint: int = 5
    random_kills: int = 220
    minutes: float = 14.0
    max_size: int = 40 * MiB
    slow_files: float = 0.15
    """Fraction of files written slowly while the daemon runs."""
    failpoint_timeout: float = 12.0
    """Seconds an armed run may take to reach its failpoint before it is killed anyway."""
    random_delay: tuple[float, float] = (0.3, 3.0)
    final_timeout: float = 240.0
    workdir: Path | None = None
    keep: bool = False
    verbose: bool = True
    fs: FsOptions | None = None
    """The file-system part (``chaos_fs``); None: its long form. Off with ``--no-fs``."""
    run_fs: bool = True

    def __post_init__(self) -> None:
        if self.fs is None:
            self.fs = FsOptions(seed=self.seed)

    @classmethod
    def short(cls, seed: int) -> Options:
        """The short form inside ``make test``: each failpoint once, a few random kills."""
        return cls(
            seed=seed,
            files=8,
            kills_per_failpoint=1,
            random_kills=3,
            minutes=1.5,
            max_size=1 * MiB,
            slow_files=0.25,
            failpoint_timeout=8.0,
            random_delay=(0.8, 2.0),
            final_timeout=60.0,
            fs=FsOptions.short(seed),
        )


@dataclass
class FileSpec(NamedFile):
    """One source file: where it goes, what it holds, when it appears."""

    index: int
    relpath: str
    size: int
    slow: bool
    appear_run: int
    sha256: str = ""
    changes: int = 0
    started: bool = False
    """Being written or written."""
    written: bool = False
    """Complete and closed: the campaign may change it."""


def plan_files(options: Options, rng: random.Random, runs: int) -> list[FileSpec]:
    """The seeded mix: a backlog at the start, the rest appearing while kills go on."""
    specs = []
    backlog = max(2, options.files // 5)
    spread_over = max(1, int(runs * 0.8))
    for index in range(options.files):
        slow = index >= backlog and rng.random() < options.slow_files
        size = random_size(rng, min(options.max_size, 8 * MiB) if slow else options.max_size)
        if index < backlog:
            appear = 0
        else:
            appear = 1 + (index - backlog) * spread_over // max(1, options.files - backlog)
        folder = rng.choice(FOLDERS)
        name = f"c{options.seed % 100000:05d}-{index:03d}{'-slow' if slow else ''}"
        relpath = str(Path(folder) / (name + rng.choice(EXTENSIONS)))
        specs.append(FileSpec(index, relpath, size, slow, appear))
    return specs


def plan_kills(options: Options, rng: random.Random) -> list[str]:
    """Kinds of run in a seeded order: each failpoint so many times, and the random kills."""
    plan = [name for name in FAILPOINTS for _ in range(options.kills_per_failpoint)]
    plan += ["random"] * options.random_kills
    rng.shuffle(plan)
    return plan


def extra_file(options: Options, rng: random.Random, index: int, appear_run: int) -> FileSpec:
    """One more file after the planned ones, when a kill needs work to land in."""
    name = f"c{options.seed % 100000:05d}-{index:03d}-extra.mp4"
    size = random_size(rng, min(options.max_size, 8 * MiB))
    return FileSpec(index, name, size, False, appear_run)


def write_file(spec: FileSpec, root: Path, seed: int, pace: Callable[[], None] | None) -> None:
    """Write the file's first version; ``pace`` sleeps between pieces (a slow writer)."""
    path = root / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    pieces = 8 if pace else 1
    piece = max(1, math.ceil(spec.size / pieces))
    with open(path, "wb") as handle:
        buffer = b"".join(content(seed, spec.index, 0, spec.size))
        for start in range(0, spec.size, piece):
            data = buffer[start : start + piece]
            handle.write(data)
            handle.flush()
            digest.update(data)
            if pace:
                pace()
    spec.sha256 = digest.hexdigest()
    spec.written = True


def append_to(spec: FileSpec, root: Path, seed: int, rng: random.Random) -> None:
    """Change the file the way a capture program that reopens it would: more bytes at the end."""
    spec.changes += 1
    extra = b"".join(content(seed, spec.index, spec.changes, rng.randint(1, 64 * KiB)))
    path = root / spec.relpath
    with open(path, "ab") as handle:
        handle.write(extra)
    spec.size += len(extra)
    spec.sha256 = sha256_file(path)


class SlowWriter:
    """A thread that writes files in pieces, holding them open, while the daemon runs."""

    def __init__(self, root: Path, seed: int, rng: random.Random) -> None:
        self.root = root
        self.seed = seed
        self.rng = rng
        self.tasks: queue.Queue[FileSpec | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="slow-writer", daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    def add(self, spec: FileSpec) -> None:
        self.tasks.put(spec)

    def wait_idle(self) -> None:
        self.tasks.join()

    def close(self) -> None:
        self.tasks.put(None)
        self.thread.join(60)

    def _run(self) -> None:
        while (spec := self.tasks.get()) is not None:
            try:
                pace = functools.partial(time.sleep, self.rng.uniform(0.1, 0.35))
                write_file(spec, self.root, self.seed, pace)
            except BaseException as exc:  # reported by the campaign
                self.error = exc
            finally:
                self.tasks.task_done()
        self.tasks.task_done()
