"""The FUSE side: kernel requests (paths and handles) turned into :class:`Volume` calls.

Built on mfusepy (ctypes over libfuse 3, nothing to compile). Choices that
matter for what runs on it:

- ``direct_io`` off, so ``mmap`` works (SQLite's ``-shm``); the kernel's page
  cache is dropped at every mount, and the controller remounts after a cut.
- No ``lock``/``flock`` handlers: libfuse then leaves POSIX and BSD locks to
  the kernel, which keeps them locally for the mount (all its users are on
  this machine), as SQLite and the daemon's lock file need.
- An unlinked file stays usable through its open handles: libfuse renames
  it to ``.fuse_hidden...`` (its ``hard_remove`` would make ``fstat`` of it
  fail), which the volume takes as the unlink it is: the hidden name is in no
  folder, never durable, and only serves requests that come by path.
- ``use_ino``: inode numbers are the store's, stable across cuts, as the
  daemon's (device, inode) identity checks need.
- ``rename`` receives ``renameat2`` flags (mfusepy drops them; :class:`_Fuse`
  passes them on), so ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE`` work.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mfusepy

from powercut.volume import Node, Volume, fail

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class Operations:
    """The request handlers mfusepy calls (one thread: ``nothreads``)."""

    use_ns = True
    flag_nopath = True
    flag_nullpath_ok = True

    def __init__(self, volume: Volume, ready_fd: int | None = None) -> None:
        self.volume = volume
        self.handles: dict[int, Node] = {}
        self.next_handle = 1
        self.ready_fd = ready_fd

    # --- mount ------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1
            config.nullpath_ok = 1
            config.direct_io = 0
            config.kernel_cache = 0
            config.negative_timeout = 0.0
        if self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
            self.ready_fd = None

    def destroy(self, path: str) -> None:
        self.volume.close()

    # --- helpers ----------------------------------------------------------------

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh:
            node = self.handles.get(fh)
            if node is not None:
                return node
        if path is None:
            raise fail(errno.EBADF)
        return self.volume.lookup(path)

    def _open(self, node: Node) -> int:
        handle = self.next_handle
        self.next_handle += 1
        self.handles[handle] = node
        node.opens += 1
        return handle

    def _close(self, fh: int) -> None:
        node = self.handles.pop(fh, None)
        if node is not None:
            node.opens -= 1
            self.volume._maybe_forget(node)

    def _stat(self, node: Node) -> dict[str, int]:
        attrs = node.attrs
        return {
            "st_ino": node.ino,
            "st_mode": attrs.mode,
            "st_nlink": self.volume.nlink(node),
            "st_uid": attrs.uid,
            "st_gid": attrs.gid,
            "st_size": node.size if not node.is_dir else 4096,
            "st_blocks": (node.size + 511) // 512,
            "st_blksize": 4096,
            "st_atime": attrs.atime_ns,
            "st_mtime": attrs.mtime_ns,
            "st_ctime": attrs.ctime_ns,
        }

    # --- attributes -------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        return self._stat(self._node(path, fh))

    def access(self, path: str, amode: int) -> int:
        self.volume.lookup(path)
        return 0

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        node.attrs.mode = stat.S_IFMT(node.attrs.mode) | stat.S_IMODE(mode)
        node.attrs.ctime_ns = time.time_ns()
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if uid != -1:
            node.attrs.uid = uid
        if gid != -1:
            node.attrs.gid = gid
        node.attrs.ctime_ns = time.time_ns()
        return 0

    def utimens(
        self,
        path: str | None,
        times: tuple[tuple[int, int], tuple[int, int]] | None,
        fh: int | None,
    ) -> int:
        node = self._node(path, fh)
        now = time.time_ns()
        if times is None:
            node.attrs.atime_ns = node.attrs.mtime_ns = now
        else:
            for which, (seconds, nanos) in zip(("atime_ns", "mtime_ns"), times, strict=True):
                if nanos == UTIME_OMIT:
                    continue
                value = now if nanos == UTIME_NOW else seconds * 10**9 + nanos
                setattr(node.attrs, which, value)
        node.attrs.ctime_ns = now
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self.volume.store.root)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        result = {key: getattr(info, key) for key in keys}
        result.update(f_favail=info.f_favail, f_namemax=255)
        return result

    # --- names ------------------------------------------------------------------

    def _context(self) -> tuple[int, int]:
        uid, gid, _ = mfusepy.fuse_get_context()
        return uid, gid

    def create(self, path: str, mode: int, flags: int) -> int:
        uid, gid = self._context()
        node = self.volume.create(path, stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
        return self._open(node)

    def mkdir(self, path: str, mode: int) -> int:
        uid, gid = self._context()
        self.volume.mkdir(path, mode, uid, gid)
        return 0

    def symlink(self, target: str, source: str) -> int:
        uid, gid = self._context()
        self.volume.symlink(target, source, uid, gid)
        return 0

    def readlink(self, path: str) -> str:
        node = self.volume.lookup(path)
        if not stat.S_ISLNK(node.attrs.mode):
            raise fail(errno.EINVAL)
        return node.target

    def link(self, target: str, source: str) -> int:
        self.volume.link(source, target)
        return 0

    def unlink(self, path: str) -> int:
        self.volume.unlink(path)
        return 0

    def rmdir(self, path: str) -> int:
        self.volume.rmdir(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.volume.rename(old, new, flags)
        return 0

    # --- files ------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        node = self.volume.lookup(path)
        if flags & os.O_TRUNC and node.is_file:
            self.volume.truncate(node, 0)
        return self._open(node)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.volume.read(self._node(path, fh), size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.volume.write(self._node(path, fh), data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self.volume.truncate(self._node(path, fh), length)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        self.volume.fallocate(self._node(path, fh), mode, offset, size)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0  # close(2) promises nothing about durability

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.volume.fsync_file(self._node(path, fh))
        return 0

    def release(self, path: str | None, fh: int) -> int:
        self._close(fh)
        return 0

    # --- folders ----------------------------------------------------------------

    def opendir(self, path: str) -> int:
        node = self.volume.lookup(path)
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        return self._open(node)

    def readdir(self, path: str | None, fh: int) -> Iterator[tuple[str, dict[str, int], int]]:
        node = self._node(path, fh)
        yield ".", {"st_ino": node.ino, "st_mode": node.attrs.mode}, 0
        yield "..", {"st_mode": stat.S_IFDIR}, 0
        for name, child in list(self.volume.listing(node)):
            yield name, {"st_ino": child.ino, "st_mode": child.attrs.mode}, 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.volume.fsync_dir(self._node(path, fh))
        return 0

    def releasedir(self, path: str | None, fh: int) -> int:
        self._close(fh)
        return 0


def _text(raw: bytes | None, fuse: mfusepy.FUSE) -> str | None:
    return None if raw is None else raw.decode(fuse.encoding, fuse.errors)


def _handle(fip: Any) -> int | None:
    return int(fip.contents.fh) if fip else None


class _Fuse(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy, passing on what it drops: rename flags, and the handle of f-calls."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        result: int = self.operations.rename(_text(old, self), _text(new, self), flags)
        return result

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        result: int = self.operations.chmod(_text(path, self), mode, _handle(fip))
        return result

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        # -1 ("leave as is") arrives as an unsigned 32-bit number
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        result: int = self.operations.chown(_text(path, self), uid, gid, _handle(fip))
        return result

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        result: int = self.operations.truncate(_text(path, self), length, _handle(fip))
        return result

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            pair = ctypes.cast(buf, ctypes.POINTER(mfusepy.c_timespec * 2)).contents
            times = ((pair[0].tv_sec, pair[0].tv_nsec), (pair[1].tv_sec, pair[1].tv_nsec))
        result: int = self.operations.utimens(_text(path, self), times, _handle(fip))
        return result


def serve(backing: Path, mountpoint: Path, mode: str, ready_fd: int | None = None) -> None:
    """Mount ``backing`` at ``mountpoint`` and serve until unmounted (or killed: a cut)."""
    from powercut.store import Store

    volume = Volume(Store(backing), mode)
    _Fuse(
        Operations(volume, ready_fd),
        str(mountpoint),
        foreground=True,
        nothreads=True,
        allow_other=True,
        default_permissions=True,
        fsname=f"powercut-{mode}",
        subtype="powercut",
    )
