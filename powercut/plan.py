"""The power-cut campaign's plan: its options, the recordings, the stations, durable writes."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chaos.harness import KiB, MiB, NamedFile, content, log_says, random_size

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
class Recording(NamedFile):
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
        return log_says(self.log, self.log_offset)

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


def plan_recordings(options: Options, rng: random.Random) -> list[Recording]:
    """Each daemon's seeded recordings: the first at once, the others at a cut of the first
    three quarters; the second of each has a broken sidecar (it must go to ``failed_to``)."""
    recordings = []
    for number, action in enumerate(ACTIONS):
        for index in range(options.files):
            style = rng.choice(STYLES)
            folder = rng.choice(("", "room-1"))
            name = f"p{options.seed % 10000:04d}-{action}-{index:02d}-{style}.mp4"
            appear = 0 if index == 0 else rng.randint(0, max(1, options.cuts * 3 // 4))
            size = random_size(rng, options.max_size)
            rec = Recording(
                action, number * 1000 + index, str(Path(folder) / name), size, style, appear
            )
            rec.broken_sidecar = index == 1
            rec.data = b"".join(content(options.seed, rec.index, 0, size))
            rec.sha256 = hashlib.sha256(rec.data).hexdigest()
            recordings.append(rec)
    return recordings


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
