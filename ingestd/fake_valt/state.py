"""Records, videos and the bytes the fake server holds for them.

Bytes go to one file per video, appended in order; a running SHA-256 per
video therefore always equals the hash of what is held, so tests can compare
hashes without reading files back.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, BinaryIO


@dataclass(eq=False)
class Video:
    """One video of a record: how much has arrived, and its hash so far."""

    id: str
    total: int | None = None
    """TOTAL of the first accepted chunk; later chunks must agree."""
    received: int = 0
    path: Path | None = None
    """The file holding the bytes, or None when the server keeps none."""
    filename: str | None = None
    """The file name the client sent with the first accepted chunk."""
    ready_at: float | None = None
    """``time.monotonic()`` at which the status turns ``ready``; None until complete."""
    hasher: Any = field(default_factory=hashlib.sha256, repr=False)
    """The running hash of the bytes held; None on a server that does not hash them."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    """Serialises chunks of this video: appends must not interleave."""

    @property
    def complete(self) -> bool:
        """All bytes announced by TOTAL have arrived."""
        return self.total is not None and self.received >= self.total

    @property
    def status(self) -> str:
        """``created`` until processed, then ``ready`` (``ready_delay`` after completion)."""
        if self.ready_at is not None and time.monotonic() >= self.ready_at:
            return "ready"
        return "created"

    @property
    def sha256(self) -> str | None:
        """Hex SHA-256 of the bytes held (None: this server does not hash them)."""
        return None if self.hasher is None else str(self.hasher.hexdigest())

    def api_view(self) -> dict[str, Any]:
        """How Valt shows a video inside a record."""
        return {"id": self.id, "status": {"type": self.status}}

    def state_view(self) -> dict[str, Any]:
        """How ``/_fake/state`` shows a video."""
        return {
            "id": self.id,
            "status": self.status,
            "total": self.total,
            "received": self.received,
            "sha256": self.sha256,
        }


@dataclass(eq=False)
class Record:
    """A Valt record: metadata plus the video(s) uploaded into it."""

    id: str
    name: str
    template: dict[str, str]
    share: dict[str, list[int]]
    created: int
    author: str
    videos: list[Video]

    def api_videos(self) -> list[dict[str, Any]] | None:
        """Valt shows ``null`` for a record none of whose videos has a byte yet."""
        if not any(video.received for video in self.videos):
            return None
        return [video.api_view() for video in self.videos]

    def api_view(self) -> dict[str, Any]:
        """The ``data`` of ``GET records/{id}``."""
        return {
            "id": self.id,
            "name": self.name,
            "template": self.template,
            "created": self.created,
            "author": self.author,
            "duration": 0,
            "sharing": self.share,
            "videos": self.api_videos(),
        }

    def search_view(self, *, strict: bool = False) -> dict[str, Any]:
        """One entry of a search answer; ``strict``: only what is documented (no videos,
        no author)."""
        view: dict[str, Any] = {"id": self.id, "name": self.name, "created": self.created}
        if not strict:
            view.update(author=self.author, videos=self.api_videos())
        return view

    def state_view(self) -> dict[str, Any]:
        """How ``/_fake/state`` shows a record."""
        return {
            "id": self.id,
            "name": self.name,
            "template": self.template,
            "share": self.share,
            "created": self.created,
            "author": self.author,
            "videos": [video.state_view() for video in self.videos],
        }


class Store:
    """All records, the ids of deleted ones, and where their bytes live.

    ``hash_bytes`` False: videos keep no running SHA-256 (their ``sha256`` is None),
    so a benchmark's server only counts bytes and checks the chunk rules.
    """

    def __init__(self, data_dir: Path, *, keep_bytes: bool = True, hash_bytes: bool = True) -> None:
        self.data_dir = data_dir
        self.keep_bytes = keep_bytes
        self.hash_bytes = hash_bytes
        self.records: dict[str, Record] = {}
        self.deleted: list[str] = []

    def create(
        self,
        name: str,
        *,
        author: str,
        template: dict[str, str] | None = None,
        share: dict[str, list[int]] | None = None,
        created: int | None = None,
    ) -> Record:
        """A new record with one empty video, as ``create-upload`` makes it."""
        record_id = str(uuid.uuid4())
        video = Video(id=str(uuid.uuid4()), hasher=hashlib.sha256() if self.hash_bytes else None)
        if self.keep_bytes:
            video.path = self.data_dir / record_id / f"{video.id}.bin"
        record = Record(
            id=record_id,
            name=name,
            template=dict(template or {}),
            share={
                "users": list((share or {}).get("users", [])),
                "groups": list((share or {}).get("groups", [])),
            },
            created=int(time.time()) if created is None else created,
            author=author,
            videos=[video],
        )
        self.records[record_id] = record
        return record

    def find_video(self, record_id: str, video_id: str) -> tuple[Record | None, Video | None]:
        """The record and its video, or None for whichever is unknown."""
        record = self.records.get(record_id)
        if record is None:
            return None, None
        return record, next((v for v in record.videos if v.id == video_id), None)

    def delete(self, record_id: str) -> bool:
        """Forget a record and its bytes; False if there was no such record."""
        record = self.records.pop(record_id, None)
        if record is None:
            return False
        self.deleted.append(record_id)
        shutil.rmtree(self.data_dir / record_id, ignore_errors=True)
        return True

    def search(
        self,
        text: str,
        *,
        start: date | None = None,
        end: date | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Record]:
        """Case-insensitive substring match on the name, newest first, like Valt's search."""
        needle = text.casefold()
        matches = []
        for order, record in enumerate(self.records.values()):
            created_on = datetime.fromtimestamp(record.created).date()
            if needle not in record.name.casefold():
                continue
            if (start and created_on < start) or (end and created_on > end):
                continue
            matches.append((record.created, order, record))
        matches.sort(key=lambda match: (match[0], match[1]), reverse=True)
        return [record for _, _, record in matches[offset : offset + limit]]

    def write_whole(self, video: Video, content: bytes, *, ready_at: float) -> None:
        """Give a video its complete content at once (seeding)."""
        video.total = video.received = len(content)
        video.hasher = hashlib.sha256(content)
        video.ready_at = ready_at
        if video.path is not None:
            video.path.parent.mkdir(parents=True, exist_ok=True)
            video.path.write_bytes(content)

    def video_bytes(self, record_id: str) -> bytes:
        """The bytes held for a record's (first) video."""
        record = self.records[record_id]
        path = record.videos[0].path
        if path is None:
            raise ValueError("this fake server keeps no bytes (keep_bytes=False)")
        return path.read_bytes() if path.exists() else b""


class PendingAppend:
    """Bytes being appended to a video, applied only on :meth:`commit`.

    A chunk that turns out to be wrong (short, long, too large) or whose
    request breaks off must leave the video as it was: the file is cut back
    and the running hash is only replaced on commit.
    """

    def __init__(self, video: Video) -> None:
        self.video = video
        self.hasher = None if video.hasher is None else video.hasher.copy()
        self.length = 0
        self._file: BinaryIO | None = None
        if video.path is not None:
            video.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = video.path.open("r+b" if video.path.exists() else "w+b")
            self._file.seek(video.received)

    def write(self, chunk: bytes | memoryview) -> None:
        """Take the next piece of the chunk."""
        if self.hasher is not None:
            self.hasher.update(chunk)
        self.length += len(chunk)
        if self._file is not None:
            self._file.write(chunk)

    def commit(self) -> None:
        """Make the appended bytes part of the video."""
        if self._file is not None:
            self._file.truncate()
            self._file.close()
            self._file = None
        self.video.hasher = self.hasher
        self.video.received += self.length

    def rollback(self) -> None:
        """Forget the appended bytes; safe to call after commit (does nothing)."""
        if self._file is not None:
            self._file.truncate(self.video.received)
            self._file.close()
            self._file = None
