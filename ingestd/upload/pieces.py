"""A file's bytes for upload, in pieces, hashed as they go.

A recording that was just written is almost always still in the page cache.
Read with ``RWF_NOWAIT``, such bytes come back without ever blocking, so the
event loop reads and hashes them itself: handing every piece to a thread and
back cost a fifth of the upload rate and a tenth more CPU on a 2-core machine
(bench case 1). Bytes that are not cached (an old file, a network share, a
machine short of memory) are read in a worker thread, so a slow disk never
stalls the loop; then only the hashing runs on the loop.

Hashing on the loop costs about a millisecond per piece, which bounds how long
any other task waits, and it keeps all uploads' hashing on one core: about
1 GB/s here, far beyond the links ingestd feeds. (A hashing thread beside the
loop was measured too, fed in order and waking the loop only when it fell 4
pieces behind: on 2 cores, with the server pinned to one of them, it gave
5-8% less rate for 5-7% more CPU per GiB than hashing on the loop, and no
more rate with the server unpinned: there is no core it could have to itself.)

Pieces go to the socket as memoryviews: what the socket does not take at once
is then sliced without a copy (a bytearray slice is one): -10% CPU per GiB.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingestd.aio import blocking
from ingestd.disk.judged import Judged, OpenRule, as_snapshot, open_judged, same_identity
from ingestd.errors import SourceChanged, SourceMissing, SourceUnreadable
from ingestd.upload.pacing import Pacer

PIECE_SIZE = 1024 * 1024
"""Bytes read, hashed and handed to the socket at a time (bench/: 1 MiB instead of
256 KiB cut ingestd's CPU per GiB by about a fifth: fewer reads and writes)."""

Hasher = Any  # hashlib's object has no public type

LOOK_EVERY = 1.0
"""Seconds between two looks at the path of a file being uploaded; between them, each
chunk's look is an ``fstat`` of the open file on the loop (a thread's hop a chunk cost
3-4% of the CPU of a large upload at loopback rates: bench case 2)."""

# Reads that may block get threads of their own, so a stuck share cannot take
# the threads that the ledger, stat checks and the watcher need.
_READERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingestd-read")
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class _File:
    """One open file read at explicit offsets: from the cache in place, else in a thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.nowait = hasattr(os, "RWF_NOWAIT")
        self.pending: Future[bytes] | None = None

    def read_cached(self, offset: int, size: int) -> bytearray | None:
        """Up to ``size`` bytes that the page cache holds now, or None if it holds none."""
        if not self.nowait:
            return None
        buffer = bytearray(size)
        try:
            count = os.preadv(self.fd, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
            self.nowait = False  # this file system cannot say; use the thread from now on
            return None
        del buffer[count:]
        return buffer

    async def read(self, offset: int, size: int) -> bytes | bytearray:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        cached = self.read_cached(offset, size)
        if cached is not None:
            return cached
        pending = self.pending = _READERS.submit(os.pread, self.fd, size, offset)
        try:
            return await asyncio.wrap_future(pending)
        finally:
            if pending.done():  # else cancelled while running: close() waits for it
                self.pending = None

    def close(self) -> None:
        """Close now, or when a read still running in a thread ends (never under it)."""
        pending, self.pending = self.pending, None
        if pending is not None and not pending.cancel() and not pending.done():
            pending.add_done_callback(lambda _: os.close(self.fd))
            return
        os.close(self.fd)


@dataclass
class Sending:
    """One sending of one chunk: the hash of the file before it, and as its pieces go.

    The client may send a body more than once (a 401 and a fresh login): each
    sending hashes into its own copy, and the last one counts.
    """

    base: Hasher
    hasher: Hasher = field(init=False)

    def __post_init__(self) -> None:
        self.hasher = self.base.copy()


@dataclass
class _Ahead:
    """The first piece of the next chunk, read and hashed while the server answered."""

    offset: int
    base: Hasher
    data: bytes | bytearray
    hasher: Hasher


class Source:
    """The file being uploaded, open for the whole upload and read at offsets.

    Between two chunks the server takes a moment to answer. The first piece of
    the next chunk is read (from the page cache) and hashed in that moment, so
    the next request's bytes start at once; a chunk that is sent again instead
    simply reads its bytes anew.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._file = _File(fd)
        self._ahead: _Ahead | None = None
        self._closed = False
        self._links: int | None = None
        self._path_seen = time.monotonic()  # Source.open looked at the path just now

    @classmethod
    async def open(cls, path: Path, judged: Judged, rule: OpenRule) -> Source:
        """Open the very file that was judged (``judged``: its snapshot); the upload
        reads this descriptor only. FileRefused if the path leads elsewhere now."""
        try:
            fd = await blocking(open_judged, path, judged, rule)
        except FileNotFoundError:
            raise SourceMissing(str(path)) from None
        except PermissionError as exc:
            raise SourceUnreadable(f"cannot open the file ({exc.strerror})") from None
        return cls(path, fd)

    def unchanged(self, judged: Judged) -> bool:
        """Whether the open file is still as judged, told at once by ``fstat``: its size,
        mtime and identity, and no link gone or added since the first look (a file that
        is deleted, or replaced by a rename, has one link less). False means "look at
        the path" (a thread's work): so it is at least every LOOK_EVERY seconds (a file
        renamed away keeps its links), and always on a file system that does not serve
        ``RWF_NOWAIT`` reads, where even ``fstat`` may wait (a network share)."""
        now = time.monotonic()
        if self._closed or not self._file.nowait or now - self._path_seen >= LOOK_EVERY:
            self._path_seen = now  # the caller looks at the path now
            return False
        info = os.fstat(self._file.fd)
        if self._links is None:
            self._links = info.st_nlink
        expected = as_snapshot(judged)
        is_now = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
        was = (expected.size, expected.mtime_ns, expected.inode, expected.device)
        # same_identity, as the look at the path: a shared ledger's job knows no device.
        if same_identity(is_now, was) and info.st_nlink == self._links > 0:
            return True
        self._path_seen = now
        return False

    async def pieces(
        self,
        sending: Sending,
        start: int,
        end: int,
        pacer: Pacer | None = None,
        *,
        next_end: int | None = None,
    ) -> AsyncIterator[memoryview]:
        """Bytes ``[start, end)`` in pieces, fed to ``sending.hasher`` as they go.

        Memory stays at a piece or two whatever the file size. With a ``pacer``
        (``upload.bandwidth_limit``) each piece waits for its share of the limit
        before it is handed on. A file that ends early has changed under us: the
        request fails and the next attempt's stat check takes it from there.
        ``next_end``: where the next chunk ends, to read its first piece ahead.
        """
        offset = start
        ahead, self._ahead = self._ahead, None
        if (
            ahead is not None
            and ahead.offset == start
            and ahead.base is sending.base
            and len(ahead.data) <= end - start
        ):
            sending.hasher = ahead.hasher
            offset += len(ahead.data)
            yield memoryview(ahead.data)
        while offset < end:
            size = min(PIECE_SIZE, end - offset)
            if pacer is not None:
                size = pacer.piece_size(size)
            data = await self._file.read(offset, size)
            if not data:
                raise SourceChanged(f"the file ended {end - offset} bytes early")
            sending.hasher.update(data)
            offset += len(data)
            if pacer is not None:
                await pacer.take(len(data))
            yield memoryview(data)  # the transport slices what the socket did not take: no copy
        if next_end is not None and next_end > end and pacer is None:
            # After the multipart tail has gone out (this runs once the loop is free).
            size = min(PIECE_SIZE, next_end - end)
            asyncio.get_running_loop().call_soon(self._read_ahead, end, size, sending.hasher)

    def _read_ahead(self, offset: int, size: int, base: Hasher) -> None:
        if self._closed:
            return
        try:
            data = self._file.read_cached(offset, size)
        except OSError:
            return  # the chunk's own read will meet the same error and report it
        if data:
            hasher = base.copy()
            hasher.update(data)
            self._ahead = _Ahead(offset, base, data, hasher)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ahead = None
            self._file.close()


def hash_prefix(path: Path, length: int, judged: Judged, rule: OpenRule) -> Hasher:
    """sha256 state over the first ``length`` bytes of the file that was judged (to resume
    the full-content hash)."""
    hasher = hashlib.sha256()
    try:
        fd = open_judged(path, judged, rule)
    except FileNotFoundError:
        raise SourceMissing(str(path)) from None
    with os.fdopen(fd, "rb") as handle:
        remaining = length
        while remaining > 0:
            data = handle.read(min(4 * PIECE_SIZE, remaining))
            if not data:
                raise SourceChanged("the file is shorter than the bytes already sent")
            hasher.update(data)
            remaining -= len(data)
    return hasher
