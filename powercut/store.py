"""The durable half of the test file system: what a disk holds after the power comes back.

The backing folder is not a mirror of the tree but an inode store, because a
name and the data behind it become durable at different moments (the data at
``fsync`` of the file, the name at ``fsync`` of its folder):

- ``data/INO``: a regular file's durable bytes; its mode, owner and times are
  the inode's durable attributes;
- ``links/INO``: a symbolic link (its target is the link's target);
- ``dirs/INO.json``: a folder's durable attributes and entries (name -> inode).

Inode 1 is the root. At :meth:`Store.load` (a "boot") only what is reachable
from the root through durable entries exists; every other record (a file that
was fsynced but whose name never was, a folder whose entry was never made
durable) is swept away, as a file system check after a crash frees orphans.
The backing folder itself is not fsynced: it models the disk, and a crash of
the machine that holds it is not what the tests simulate.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

ROOT = 1


@dataclass
class Attrs:
    """An inode's attributes as the disk holds them."""

    mode: int  # with the file type bits
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass
class Record:
    """One durable inode, as :meth:`Store.load` finds it."""

    ino: int
    attrs: Attrs
    size: int = 0
    entries: dict[str, int] = field(default_factory=dict)
    target: str | None = None


class Store:
    """The inode store in ``root`` (created on first use)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.links = root / "links"
        self.dirs = root / "dirs"
        for folder in (self.data, self.links, self.dirs):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.dir_path(ROOT).exists():
            now = _now()
            self.write_dir(ROOT, Attrs(stat.S_IFDIR | 0o755, 0, 0, now, now, now), {})

    def data_path(self, ino: int) -> Path:
        return self.data / str(ino)

    def dir_path(self, ino: int) -> Path:
        return self.dirs / f"{ino}.json"

    def link_path(self, ino: int) -> Path:
        return self.links / str(ino)

    # --- writing ---------------------------------------------------------------

    def write_dir(self, ino: int, attrs: Attrs, entries: dict[str, int]) -> None:
        """Replace a folder's durable record in one step (a rename: never half written)."""
        body = json.dumps({"attrs": attrs.__dict__, "entries": entries})
        temporary = self.dirs / f"{ino}.json.tmp"
        temporary.write_text(body)
        os.replace(temporary, self.dir_path(ino))

    def create_file(self, ino: int, attrs: Attrs) -> int:
        """An empty durable data file for ``ino``; returns an open read-write descriptor."""
        fd = os.open(self.data_path(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        apply_attrs(fd, attrs)
        return fd

    def write_symlink(self, ino: int, target: str, attrs: Attrs) -> None:
        path = self.link_path(ino)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.symlink(target, path)
        os.lchown(path, attrs.uid, attrs.gid)
        os.utime(path, ns=(attrs.atime_ns, attrs.mtime_ns), follow_symlinks=False)

    def open_data(self, ino: int) -> int:
        return os.open(self.data_path(ino), os.O_RDWR)

    # --- booting ---------------------------------------------------------------

    def load(self) -> dict[int, Record]:
        """Every inode reachable from the root through durable entries; sweep the rest.

        A folder reached twice (per-folder durability can leave a folder's entry
        in two parents after a rename) keeps its first entry only, so the tree
        has no cycles.
        """
        records: dict[int, Record] = {ROOT: self._read_dir(ROOT)}
        queue = deque([ROOT])
        while queue:
            record = records[queue.popleft()]
            kept: dict[str, int] = {}
            for name, child in record.entries.items():
                if child in records:
                    if not stat.S_ISDIR(records[child].attrs.mode):
                        kept[name] = child  # a hard link to a file already found
                    continue  # else a second entry for a folder: dropped
                if self.dir_path(child).exists():
                    records[child] = self._read_dir(child)
                    queue.append(child)
                elif (leaf := self._read_leaf(child)) is not None:
                    records[child] = leaf
                else:
                    continue
                kept[name] = child
            record.entries = kept
        self._sweep(set(records))
        return records

    def _read_dir(self, ino: int) -> Record:
        body = json.loads(self.dir_path(ino).read_text())
        attrs = Attrs(**body["attrs"])
        entries = {str(k): int(v) for k, v in body["entries"].items()}
        return Record(ino, attrs, entries=entries)

    def _read_leaf(self, ino: int) -> Record | None:
        path = self.data_path(ino)
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            return Record(ino, _attrs_of(info, stat.S_IFREG), size=info.st_size)
        path = self.link_path(ino)
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            return Record(ino, _attrs_of(info, stat.S_IFLNK), target=os.readlink(path))
        return None

    def _sweep(self, live: set[int]) -> None:
        for folder, suffix in ((self.data, ""), (self.links, ""), (self.dirs, ".json")):
            for entry in os.scandir(folder):
                name = entry.name
                stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
                if not stem.isdigit() or int(stem) not in live:
                    os.unlink(entry.path)


def apply_attrs(fd: int, attrs: Attrs) -> None:
    """Give a durable data file the inode's owner, mode and times."""
    os.fchown(fd, attrs.uid, attrs.gid)
    os.fchmod(fd, stat.S_IMODE(attrs.mode))
    os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))


def _attrs_of(info: os.stat_result, kind: int) -> Attrs:
    mode = kind | (0o777 if kind == stat.S_IFLNK else stat.S_IMODE(info.st_mode))
    # The disk's ctime cannot be set from here: a booted inode's ctime is its mtime.
    return Attrs(
        mode, info.st_uid, info.st_gid, info.st_atime_ns, info.st_mtime_ns, info.st_mtime_ns
    )


def _now() -> int:
    return time.time_ns()
