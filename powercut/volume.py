"""The volatile half of the test file system: what the running machine sees.

Every inode lives here while the file system is mounted. A regular file's
bytes are its durable data file (``store.py``) seen through ``base_limit``
(a truncation hides the durable bytes past it), with the pages written since
the last ``fsync`` laid over it in memory. A folder's entries here are the
live ones; the store keeps the ones made durable. Nothing in this module's
memory survives the server process: a power cut is the end of that process.

Durability rules (``mode``):

- ``strict``: a file's data, size and attributes become durable at its
  ``fsync``/``fdatasync``; a folder's entries (every create, rename, unlink,
  link, mkdir, rmdir, symlink in it) and attributes at its own ``fsync``.
  A rename between two folders is two changes, one in each.
- ``ordered``: ext4's default journal (``data=ordered``), simplified: any
  ``fsync`` commits the journal, so every folder's pending entries become
  durable at once; data still only at the file's own ``fsync``, except that
  a file renamed over an existing one has its data flushed with the next
  commit (ext4's ``auto_da_alloc``).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from powercut.store import ROOT, Attrs, Store, apply_attrs

PAGE = 4096
HIDDEN = ".fuse_hidden"
MODES = ("strict", "ordered")
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1


def fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass
class Node:
    """One inode as the running system sees it."""

    ino: int
    attrs: Attrs
    durable: bool  # the store has a record for it
    size: int = 0
    base_limit: int = 0  # durable bytes past this read as zeros (a truncation)
    pages: dict[int, bytearray] = field(default_factory=dict)  # written since the last fsync
    entries: dict[str, int] = field(default_factory=dict)
    target: str = ""
    links: int = 0
    opens: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attrs.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.attrs.mode)


class Volume:
    """The mounted file system's state, loaded from ``store`` as after a boot."""

    def __init__(self, store: Store, mode: str = "strict") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
        self.store = store
        self.mode = mode
        self.nodes: dict[int, Node] = {}
        self.fds: dict[int, int] = {}  # ino -> descriptor of its durable data file
        self.dirty_dirs: set[int] = set()  # folders whose entries differ from the store's
        self.flush_at_commit: set[int] = set()  # ordered: auto_da_alloc
        self.hidden: dict[str, Node] = {}  # libfuse's names for unlinked open files
        for record in store.load().values():
            node = Node(record.ino, record.attrs, durable=True, size=record.size)
            node.base_limit = record.size
            node.entries = dict(record.entries)
            node.target = record.target or ""
            if node.target:
                node.size = len(os.fsencode(node.target))
            self.nodes[record.ino] = node
        for node in list(self.nodes.values()):
            for child in node.entries.values():
                self.nodes[child].links += 1
        self.nodes[ROOT].links = 1
        self.next_ino = max(self.nodes) + 1

    # --- names ------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        parts = _parts(path)
        if parts and parts[-1] in self.hidden:
            return self.hidden[parts[-1]]
        node = self.nodes[ROOT]
        for name in parts:
            if not node.is_dir:
                raise fail(errno.ENOTDIR)
            child = node.entries.get(name)
            if child is None:
                raise fail(errno.ENOENT)
            node = self.nodes[child]
        return node

    def parent_of(self, path: str) -> tuple[Node, str]:
        parts = _parts(path)
        if not parts:
            raise fail(errno.EBUSY)
        parent = self.lookup("/".join(parts[:-1]))
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        return parent, parts[-1]

    def _new(self, mode: int, uid: int, gid: int) -> Node:
        now = time.time_ns()
        node = Node(self.next_ino, Attrs(mode, uid, gid, now, now, now), durable=False)
        self.next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _add(self, parent: Node, name: str, node: Node) -> None:
        parent.entries[name] = node.ino
        node.links += 1
        self._touch_dir(parent)

    def _drop(self, parent: Node, name: str) -> None:
        node = self.nodes[parent.entries.pop(name)]
        node.links -= 1
        self._touch_dir(parent)
        self._maybe_forget(node)

    def _touch_dir(self, parent: Node) -> None:
        now = time.time_ns()
        parent.attrs.mtime_ns = parent.attrs.ctime_ns = now
        self.dirty_dirs.add(parent.ino)

    def _maybe_forget(self, node: Node) -> None:
        """An inode with no name and no open handle is gone from the running system."""
        if node.links > 0 or node.opens > 0:
            return
        self.nodes.pop(node.ino, None)
        fd = self.fds.pop(node.ino, None)
        if fd is not None:
            os.close(fd)
        self.flush_at_commit.discard(node.ino)
        # Its durable record stays: a folder entry on disk may still name it until that
        # folder is fsynced. The next boot sweeps it if nothing durable does.

    def create(self, path: str, mode: int, uid: int, gid: int) -> Node:
        parent, name = self.parent_of(path)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        node = self._new(mode, uid, gid)
        self._add(parent, name, node)
        return node

    def mkdir(self, path: str, mode: int, uid: int, gid: int) -> Node:
        return self.create(path, stat.S_IFDIR | stat.S_IMODE(mode), uid, gid)

    def symlink(self, path: str, target: str, uid: int, gid: int) -> Node:
        node = self.create(path, stat.S_IFLNK | 0o777, uid, gid)
        node.target = target
        node.size = len(os.fsencode(target))
        return node

    def link(self, existing: str, path: str) -> Node:
        node = self.lookup(existing)
        if node.is_dir:
            raise fail(errno.EPERM)
        parent, name = self.parent_of(path)
        if name in parent.entries:
            raise fail(errno.EEXIST)
        self._add(parent, name, node)
        node.attrs.ctime_ns = time.time_ns()
        return node

    def unlink(self, path: str) -> None:
        hidden = self.hidden.pop(path.rpartition("/")[2], None)
        if hidden is not None:  # the last handle of an unlinked file is closed
            hidden.opens -= 1
            self._maybe_forget(hidden)
            return
        parent, name = self.parent_of(path)
        node = self.lookup(path)
        if node.is_dir:
            raise fail(errno.EISDIR)
        node.attrs.ctime_ns = time.time_ns()
        self._drop(parent, name)

    def rmdir(self, path: str) -> None:
        parent, name = self.parent_of(path)
        node = self.lookup(path)
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        if node.entries:
            raise fail(errno.ENOTEMPTY)
        self._drop(parent, name)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """``renameat2``: plain, ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE``."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise fail(errno.EINVAL)
        source_parent, source_name = self.parent_of(old)
        node = self.lookup(old)
        target_parent, target_name = self.parent_of(new)
        if target_name.startswith(HIDDEN) and target_name not in target_parent.entries:
            self._hide(source_parent, source_name, node, target_name)
            return
        if node.is_dir and _inside(_parts(new), _parts(old)):
            raise fail(errno.EINVAL)
        existing_ino = target_parent.entries.get(target_name)
        if flags & RENAME_EXCHANGE:
            if existing_ino is None:
                raise fail(errno.ENOENT)
            source_parent.entries[source_name] = existing_ino
            target_parent.entries[target_name] = node.ino
            self._touch_dir(source_parent)
            self._touch_dir(target_parent)
            return
        if existing_ino is not None:
            if flags & RENAME_NOREPLACE:
                raise fail(errno.EEXIST)
            if existing_ino == node.ino:
                return  # two names of one inode: POSIX says do nothing
            self._replace(target_parent, target_name, node)
        del source_parent.entries[source_name]
        self._touch_dir(source_parent)
        target_parent.entries[target_name] = node.ino
        self._touch_dir(target_parent)
        node.attrs.ctime_ns = time.time_ns()

    def _replace(self, parent: Node, name: str, node: Node) -> None:
        """Drop the entry a rename of ``node`` replaces, if the kinds allow it."""
        existing = self.nodes[parent.entries[name]]
        if node.is_dir and not existing.is_dir:
            raise fail(errno.ENOTDIR)
        if existing.is_dir and not node.is_dir:
            raise fail(errno.EISDIR)
        if existing.is_dir and existing.entries:
            raise fail(errno.ENOTEMPTY)
        self._drop(parent, name)
        if self.mode == "ordered" and node.is_file:
            self.flush_at_commit.add(node.ino)

    def _hide(self, parent: Node, name: str, node: Node, hidden_name: str) -> None:
        """libfuse renames a file still open to ``.fuse_hidden...`` instead of unlinking it
        (and unlinks that name at the last close): it is an unlink here, and the hidden name
        only a handle for requests that come by path (fstat, fchmod of the open file)."""
        node.opens += 1  # held until libfuse unlinks the hidden name
        self.hidden[hidden_name] = node
        node.attrs.ctime_ns = time.time_ns()
        self._drop(parent, name)

    def listing(self, node: Node) -> Iterator[tuple[str, Node]]:
        for name, ino in node.entries.items():
            yield name, self.nodes[ino]

    def nlink(self, node: Node) -> int:
        if node.is_dir:
            return 2 + sum(self.nodes[i].is_dir for i in node.entries.values())
        return node.links

    # --- data -------------------------------------------------------------------

    def _fd(self, node: Node) -> int:
        fd = self.fds.get(node.ino)
        if fd is None:
            fd = self.store.open_data(node.ino)
            self.fds[node.ino] = fd
        return fd

    def _base(self, node: Node, offset: int, length: int) -> bytes:
        """Durable bytes ``[offset, offset+length)`` as the running system sees them."""
        visible = min(length, node.base_limit - offset) if node.durable else 0
        data = os.pread(self._fd(node), visible, offset) if visible > 0 else b""
        return data + bytes(length - len(data))

    def read(self, node: Node, length: int, offset: int) -> bytes:
        length = min(length, node.size - offset)
        if length <= 0:
            return b""
        buffer = bytearray(self._base(node, offset, length))
        end = offset + length
        for index in range(offset // PAGE, (end - 1) // PAGE + 1):
            page = node.pages.get(index)
            if page is None:
                continue
            start = index * PAGE
            low, high = max(offset, start), min(end, start + PAGE)
            buffer[low - offset : high - offset] = page[low - start : high - start]
        return bytes(buffer)

    def write(self, node: Node, data: bytes, offset: int) -> int:
        if not data:
            return 0
        end = offset + len(data)
        for index in range(offset // PAGE, (end - 1) // PAGE + 1):
            start = index * PAGE
            page = node.pages.get(index)
            if page is None:
                page = bytearray(self._base(node, start, PAGE))
                node.pages[index] = page
            low, high = max(offset, start), min(end, start + PAGE)
            page[low - start : high - start] = data[low - offset : high - offset]
        node.size = max(node.size, end)
        now = time.time_ns()
        node.attrs.mtime_ns = node.attrs.ctime_ns = now
        return len(data)

    def truncate(self, node: Node, length: int) -> None:
        if node.is_dir:
            raise fail(errno.EISDIR)
        if length < node.size:
            for index in [i for i in node.pages if i * PAGE >= length]:
                del node.pages[index]
            page = node.pages.get(length // PAGE)
            if page is not None:
                cut = length % PAGE
                page[cut:] = bytes(PAGE - cut)
            node.base_limit = min(node.base_limit, length)
        node.size = length
        now = time.time_ns()
        node.attrs.mtime_ns = node.attrs.ctime_ns = now

    def fallocate(self, node: Node, mode: int, offset: int, length: int) -> None:
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise fail(errno.EOPNOTSUPP)
        if not mode & FALLOC_FL_KEEP_SIZE and offset + length > node.size:
            node.size = offset + length
            node.attrs.ctime_ns = time.time_ns()

    # --- durability -------------------------------------------------------------

    def fsync_file(self, node: Node) -> None:
        """Make the file's data, size and attributes durable (and, ordered: commit)."""
        if node.is_dir:
            self.fsync_dir(node)
            return
        if node.is_file:
            self._flush_data(node)
        self._ensure_record(node)
        if self.mode == "ordered":
            self._commit()

    def fsync_dir(self, node: Node) -> None:
        """Make the folder's entries and attributes durable (ordered: every folder's)."""
        if self.mode == "ordered":
            self._commit()
        else:
            self._persist_dir(node)

    def _commit(self) -> None:
        for ino in sorted(self.flush_at_commit):
            if ino in self.nodes:
                self._flush_data(self.nodes[ino])
        self.flush_at_commit.clear()
        for ino in sorted(self.dirty_dirs):
            if ino in self.nodes:
                self._persist_dir(self.nodes[ino])
        self.dirty_dirs.clear()

    def _flush_data(self, node: Node) -> None:
        if not node.durable:
            self.fds[node.ino] = self.store.create_file(node.ino, node.attrs)
            node.durable = True
        fd = self._fd(node)
        os.ftruncate(fd, node.base_limit)
        os.ftruncate(fd, node.size)
        for start, data in _runs(node.pages, node.size):
            os.pwrite(fd, data, start)
        node.pages.clear()
        node.base_limit = node.size
        apply_attrs(fd, node.attrs)

    def _persist_dir(self, node: Node) -> None:
        for child in node.entries.values():
            self._ensure_record(self.nodes[child])
        self.store.write_dir(node.ino, node.attrs, dict(node.entries))
        node.durable = True
        self.dirty_dirs.discard(node.ino)

    def _ensure_record(self, node: Node) -> None:
        """The inode exists on disk (an empty file, a folder with no durable entries yet)."""
        if node.is_dir:
            if not node.durable:
                self.store.write_dir(node.ino, node.attrs, {})
                node.durable = True
        elif stat.S_ISLNK(node.attrs.mode):
            if not node.durable:
                self.store.write_symlink(node.ino, node.target, node.attrs)
                node.durable = True
        elif not node.durable:
            self.fds[node.ino] = self.store.create_file(node.ino, node.attrs)
            node.durable = True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _inside(path: list[str], folder: list[str]) -> bool:
    return len(path) > len(folder) and path[: len(folder)] == folder


def _runs(pages: dict[int, bytearray], size: int) -> Iterator[tuple[int, bytes]]:
    """Contiguous dirty pages as (offset, bytes), cut at ``size``."""
    run_start = -1
    run: list[bytes] = []
    previous = -2
    for index in sorted(pages):
        if index * PAGE >= size:
            break
        if index != previous + 1 and run:
            yield run_start, b"".join(run)
            run = []
        if not run:
            run_start = index * PAGE
        run.append(bytes(pages[index][: size - index * PAGE]))
        previous = index
    if run:
        yield run_start, b"".join(run)
