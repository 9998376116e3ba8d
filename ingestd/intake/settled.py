"""What the scans remember of the files that need nothing: the settled files.

A rescan compares every file with its path's newest job. Done and skipped jobs
(settled) no longer change, so the scanner keeps what it needs of them between scans,
loaded from the ledger once, and asks the ledger only about files it does not recognise
(new, changed, or ones it has no word on). Not as Python objects - a dict of a million
paths takes hundreds of MiB - but as hashes of each file's identity: path, size,
mtime_ns and inode (the device is never compared, as in
:func:`ingestd.intake.waiting.same_file`). Python's hash, salted per process: the cache
lives in one.

- **Folder digests.** A folder of at least :data:`DIGEST_MIN` settled files is kept as
  a few buckets (by hash, ~:data:`BUCKET_FILES` files each), each the count and the XOR
  of its files' hashes: a few bytes per thousand files. A rescan hashes the folder's
  files (their ``stat()`` it needs anyway) and compares: a bucket that agrees holds the
  same files, all settled. XOR undoes itself, so a file that settles, or whose job is
  replaced, is folded in or out exactly (:meth:`add`, :meth:`discard`).
- **Per-file hashes**, 8 bytes each in sorted arrays, for the rest: files in small
  folders, and those of a bucket that no longer agreed (a file changed or went), until a
  scan finds the bucket whole again and folds it back into its digest. A bucket that
  disagreed is looked at file by file; files it covered are asked of the ledger once.

What is on disk is what is kept: a clean scan drops the per-file hashes it did not find
(each is marked when found: its low bit, whose sense flips every scan) and the digests
of folders it did not see. A new or changed file passes for a settled one with a chance
of about 2**-63 per settled file (per-file hashes) or 2**-50 per bucket (digests).
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any

from ingestd.intake.waiting import SETTLED, Snap

DIGEST_MIN = 32  # below, per-file hashes (8 bytes a file) cost less than a digest (~300)
BUCKET_FILES = 1024
INVALID = -1  # a bucket's count while its files are kept as per-file hashes
_SHARD_BITS = 10
_SHIFT = 64 - _SHARD_BITS  # a per-file hash's shard: its top bits
_SHARD_MASK = (1 << _SHARD_BITS) - 1
_BUCKET_SHIFT = 40  # a file's bucket in its folder: bits of its hash below the shard's
_SETTLED = frozenset(state.value for state in SETTLED)  # as the ledger's rows hold them

# What the scan makes of one file (its entry, its path) before the cache is asked: its
# stat, or None for a file to leave out (not a regular file, gone, unreadable, a name
# that is not UTF-8).
Look = Callable[[os.DirEntry[str], str], os.stat_result | None]


def raw_hash(path: str, size: int, mtime_ns: int, inode: int) -> int:
    return hash((path, size, mtime_ns, inode))


def folder_of(path: str) -> str:
    """The folder of ``path`` as the walk names it (intake/walk.py)."""
    return path[: path.rfind("/")] or "/"


def buckets_for(files: int) -> int:
    """Buckets of a folder of ``files`` settled files: a power of two, ~BUCKET_FILES each."""
    return 1 << max(0, (files // BUCKET_FILES).bit_length() - 1)


class _Folder:
    """A folder's digest: per bucket, the count (INVALID: per-file hashes) and the XOR."""

    __slots__ = ("counts", "seen_in", "xors")

    def __init__(self, buckets: int) -> None:
        self.counts = array("l", [0]) * buckets
        self.xors = array("q", [0]) * buckets
        self.seen_in = 0  # the scan that last saw the folder


class _Found:
    """What a file-by-file look found per bucket: settled files (count, XOR, their
    per-file hashes), and whether any file was not one."""

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.xors = [0] * buckets
        self.keys: list[list[int]] = [[] for _ in range(buckets)]
        self.missed = [False] * buckets
        self.odd = False

    def whole(self, bucket: int | None = None) -> bool:
        """Every file of ``bucket`` (None: of the folder) is a settled one."""
        if self.odd:
            return False
        return not any(self.missed) if bucket is None else not self.missed[bucket]


class SettledFiles:
    """The settled files' identities (see the module docstring)."""

    def __init__(self) -> None:
        self._shards: list[array[int]] = [array("q") for _ in range(1 << _SHARD_BITS)]
        self._folders: dict[str, _Folder] = {}
        self._polarity = 0  # the mark of a per-file hash found by the current scan
        self._scan = 0
        # The ledger's rows of one folder while loading (they come by id: mostly a
        # folder at a time).
        self._run_folder = ""
        self._run: list[int] = []
        # While a walk runs in its thread, changes from the event loop wait here: the
        # walk reads and rewrites the arrays without a lock.
        self._walking = False
        self._pending: list[tuple[bool, str, int]] = []

    def __len__(self) -> int:
        """How many settled files are known (per-file hashes and digests)."""
        in_digests = sum(
            count for folder in self._folders.values() for count in folder.counts if count > 0
        )
        return in_digests + sum(len(shard) for shard in self._shards)

    # --- loading -------------------------------------------------------------------------

    def load(self, rows: Iterable[Sequence[Any]]) -> None:
        """One page of ``newest_identities`` rows, (id, path, size, mtime_ns, inode, state):
        the settled ones are taken in (call :meth:`loaded` after the last page)."""
        settled, run = _SETTLED, self._run
        for row in rows:
            if row[5] not in settled:
                continue
            path = row[1]
            folder = path[: path.rfind("/")] or "/"
            if folder != self._run_folder:
                self._end_run()
                self._run_folder = folder
            run.append(hash((path, row[2], row[3], row[4])))

    def _end_run(self) -> None:
        folder, run = self._run_folder, self._run
        state = self._folders.get(folder)
        if state is None and len(run) >= DIGEST_MIN:
            state = self._folders[folder] = _Folder(buckets_for(len(run)))
        if state is None:
            for raw in run:
                self._insert(raw & ~1)
        else:
            mask = len(state.counts) - 1
            for raw in run:
                self._fold(state, (raw >> _BUCKET_SHIFT) & mask, raw)
        run.clear()

    def loaded(self) -> None:
        self._end_run()
        self._run_folder = ""

    # --- a scan ----------------------------------------------------------------------------

    def begin_scan(self) -> None:
        self._scan += 1
        self._polarity ^= 1

    def end_scan(self, clean: bool) -> None:
        """After a clean scan (every folder read), drop what it did not find."""
        if not clean:
            return
        gone = [name for name, folder in self._folders.items() if folder.seen_in != self._scan]
        for name in gone:
            del self._folders[name]
        polarity = self._polarity
        for index, shard in enumerate(self._shards):
            keep = [key for key in shard if key & 1 == polarity]
            if len(keep) != len(shard):
                self._shards[index] = array("q", keep)

    def walk_begins(self) -> None:
        self._walking = True

    def walk_ends(self) -> None:
        """Back in the event loop: apply the changes that waited for the walk."""
        self._walking = False
        pending, self._pending = self._pending, []
        for adding, path, raw in pending:
            self._change(adding, path, raw)

    def walk(
        self,
        folder: str,
        entries: list[os.DirEntry[str]],
        follow: bool,
        live: Container[str] | None,
        look: Look,
        candidates: list[tuple[str, Snap]],
    ) -> int:
        """Compare one folder's files with what is known: those not known settled go to
        ``candidates`` (``live``: the paths of live jobs here, always candidates; None:
        there are none); returns how many files there are. Runs in the walk's thread.
        ``entries`` name their files relative to the folder (walk.iter_folders)."""
        prefix = folder if folder.endswith("/") else folder + "/"
        state = self._folders.get(folder)
        bad: set[int] | None = None  # None: no digest, every file is looked up
        if state is not None:
            state.seen_in = self._scan
            bad = self._compare(state, prefix, entries, live)
            if not bad:
                odd = self._live_candidates(prefix, entries, follow, live, candidates)
                return len(entries) - odd
        buckets = len(state.counts) if state is not None else buckets_for(len(entries))
        files, found = self._file_by_file(prefix, entries, buckets, bad, live, look, candidates)
        if state is None:
            if files < DIGEST_MIN or not found.whole():
                return files
            state = self._folders[folder] = _Folder(buckets)
            state.seen_in = self._scan
            bad = set(range(buckets))
        assert bad is not None
        for bucket in bad:
            if found.whole(bucket):  # whole again: into the digest, out of the per-file hashes
                state.counts[bucket], state.xors[bucket] = found.counts[bucket], found.xors[bucket]
                for key in found.keys[bucket]:
                    self._remove(key)
            else:
                state.counts[bucket] = INVALID
        return files

    def _file_by_file(
        self,
        prefix: str,
        entries: list[os.DirEntry[str]],
        buckets: int,
        bad: set[int] | None,
        live: Container[str] | None,
        look: Look,
        candidates: list[tuple[str, Snap]],
    ) -> tuple[int, _Found]:
        """The files of a folder's ``bad`` buckets (None: all) looked up one by one, and
        what was found per bucket; returns how many files the folder has."""
        mask = buckets - 1
        found = _Found(buckets)
        files = 0
        for entry in entries:
            path = prefix + entry.name
            info = look(entry, path)
            if info is None:
                found.odd = True  # a file to leave out: the folder may read otherwise next time
                continue
            files += 1
            raw = hash((path, info.st_size, info.st_mtime_ns, info.st_ino))
            bucket = (raw >> _BUCKET_SHIFT) & mask
            snap = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
            if live is not None and path in live:
                candidates.append((path, snap))
            elif bad is not None and bucket not in bad:
                continue  # its bucket agrees
            elif self._found(raw & ~1):
                found.counts[bucket] += 1
                found.xors[bucket] ^= raw
                found.keys[bucket].append(raw & ~1)
            else:
                found.missed[bucket] = True
                candidates.append((path, snap))
        return files, found

    def _compare(
        self,
        state: _Folder,
        prefix: str,
        entries: list[os.DirEntry[str]],
        live: Container[str] | None,
    ) -> set[int]:
        """The buckets whose files disagree with the digest (all of them if a file could
        not be looked at: the file-by-file pass says why). Live files are left out."""
        buckets = len(state.counts)
        # stat() follows a symlink, but the walk yields one only with follow_symlinks; for
        # any other entry it is lstat(), and cheaper to call without the keyword.
        if buckets == 1 and live is None:  # the usual folder: one count, one XOR
            xor = 0
            try:
                for entry in entries:
                    info = entry.stat()
                    xor ^= hash((prefix + entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
            except OSError:
                return {0}
            agrees = len(entries) == state.counts[0] and xor == state.xors[0]
            return set() if agrees else {0}
        mask = buckets - 1
        counts, xors = [0] * buckets, [0] * buckets
        try:
            for entry in entries:
                path = prefix + entry.name
                if live is not None and path in live:
                    continue
                info = entry.stat()
                raw = hash((path, info.st_size, info.st_mtime_ns, info.st_ino))
                bucket = (raw >> _BUCKET_SHIFT) & mask
                counts[bucket] += 1
                xors[bucket] ^= raw
        except OSError:
            return set(range(buckets))
        return {
            bucket
            for bucket in range(buckets)
            if counts[bucket] != state.counts[bucket] or xors[bucket] != state.xors[bucket]
        }

    @staticmethod
    def _live_candidates(
        prefix: str,
        entries: list[os.DirEntry[str]],
        follow: bool,
        live: Container[str] | None,
        candidates: list[tuple[str, Snap]],
    ) -> int:
        """The live jobs' files of a folder that agrees: candidates all the same (their
        jobs need the scan's eye); returns how many were left out as not regular files."""
        if live is None:
            return 0
        odd = 0
        for entry in entries:
            path = prefix + entry.name
            if path in live:
                try:
                    info = entry.stat(follow_symlinks=follow)
                except OSError:
                    odd += 1
                    continue
                snap = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
                candidates.append((path, snap))
        return odd

    # --- changes ---------------------------------------------------------------------------

    def add(self, path: str, snap: Sequence[int]) -> None:
        """The newest job of ``path`` is settled, with this file (size, mtime_ns, inode)."""
        self._change(True, path, raw_hash(path, snap[0], snap[1], snap[2]))

    def discard(self, path: str, snap: Sequence[int]) -> None:
        """That file no longer is its path's settled newest job (a new job took the path)."""
        self._change(False, path, raw_hash(path, snap[0], snap[1], snap[2]))

    def _change(self, adding: bool, path: str, raw: int) -> None:
        if self._walking:
            self._pending.append((adding, path, raw))
            return
        state = self._folders.get(folder_of(path))
        if state is not None:
            bucket = (raw >> _BUCKET_SHIFT) & (len(state.counts) - 1)
            if state.counts[bucket] != INVALID:
                # In or out of the digest: XOR undoes itself. A file it never held makes
                # the bucket disagree at the next scan, which then looks file by file.
                self._fold(state, bucket, raw, 1 if adding else -1)
                return
        if adding:
            self._insert(raw & ~1)
        else:
            self._remove(raw & ~1)

    @staticmethod
    def _fold(state: _Folder, bucket: int, raw: int, count: int = 1) -> None:
        state.counts[bucket] += count
        state.xors[bucket] ^= raw

    def _found(self, key: int) -> bool:
        """Whether the per-file hash ``key`` is known; marks it found by this scan."""
        shard = self._shards[(key >> _SHIFT) & _SHARD_MASK]
        index = bisect.bisect_left(shard, key)
        if index == len(shard) or shard[index] | 1 != key | 1:
            return False
        shard[index] = key | self._polarity
        return True

    def _insert(self, key: int) -> None:
        shard = self._shards[(key >> _SHIFT) & _SHARD_MASK]
        index = bisect.bisect_left(shard, key)
        if index < len(shard) and shard[index] | 1 == key | 1:
            shard[index] = key | self._polarity
        else:
            shard.insert(index, key | self._polarity)

    def _remove(self, key: int) -> None:
        shard = self._shards[(key >> _SHIFT) & _SHARD_MASK]
        index = bisect.bisect_left(shard, key)
        if index < len(shard) and shard[index] | 1 == key | 1:
            del shard[index]
