"""The file-system part's actions on the disk: swaps, truncations, garbage sidecars, locks.

Everything here is done as root to files that are nobody's, the daemon's user; the
private file's bytes are counted wherever a fake server receives them.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chaos.fs_plan import GARBAGE, NOBODY, NON_REGULAR, FsFile, FsShared, Version, bump
from chaos.harness import KiB, sha256_file
from ingestd.fake_valt.multipart import MultipartStream

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


# --- the actions ------------------------------------------------------------------------------


class DiskActions:
    """One phase's hands on its watch folder: new versions, and the nine kinds of change."""

    def __init__(
        self,
        shared: FsShared,
        phase: str,
        rng: random.Random,
        aside: Path,
        pause: Callable[[float], None],
    ) -> None:
        self.shared = shared
        self.phase = phase
        self.rng = rng
        self.aside = aside
        self.pause = pause
        # The pathological nesting first (it stopped all intake), the rest in seeded order.
        self.garbage = [GARBAGE[0], *rng.sample(GARBAGE[1:], len(GARBAGE) - 1)]

    def write_version(self, item: FsFile, path: Path, size: int) -> None:
        """Write a whole new content at ``path`` and track it."""
        with open(path, "wb") as handle:
            handle.write(random_bytes(self.rng, size))
        self.track(item, path)

    def track(self, item: FsFile, path: Path) -> None:
        versions = self.shared.versions
        if item.sha256 is not None:
            versions[item.sha256].retired = True
        item.sha256 = sha256_file(path)
        versions[item.sha256] = Version(item.relpath, self.phase)

    def retire(self, item: FsFile) -> None:
        if item.sha256 is not None:
            self.shared.versions[item.sha256].retired = True
        item.sha256 = None

    def act(self, kind: str, item: FsFile, path: Path) -> None:
        """Do ``kind`` to ``item``, at ``path``, now."""
        item.actions += 1
        rng = self.rng
        if kind in NON_REGULAR:
            swap = hidden_sibling(path, rng)
            if kind == "replace_symlink":
                swap.symlink_to(self.shared.private)
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
            self.shared.report.add("replacements", 1)
        elif kind == "replace_file":
            swap = hidden_sibling(path, rng)
            self.write_version(item, swap, rng.randint(64 * KiB, self.shared.options.max_size))
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
        bump(self.shared.report.garbage, variant)
        json_side = path.with_name(path.name + ".json")
        target = path.with_name(path.name + (".yaml" if variant == "nesting_yaml" else ".json"))
        swap = hidden_sibling(path, self.rng)
        if variant == "symlink":
            swap.symlink_to(self.shared.private)
        elif variant == "random_bytes":
            swap.write_bytes(random_bytes(self.rng, self.rng.randint(1, 4 * KiB)))
        else:
            swap.write_text("[" * 100000 + "]" * 100000)
        give_to_nobody(swap)
        if variant == "nesting_yaml":
            json_side.unlink(missing_ok=True)  # NAME.mp4.json would win over NAME.mp4.yaml
        os.replace(swap, target)
        item.garbage_sidecar = True
