"""Is an MP4/MOV file complete? Judged from its top-level ISO-BMFF boxes alone.

A recorder writes ``mdat`` first and the ``moov`` index last (or patches a
placeholder at the start), so a file whose top-level boxes parse, add up to
its size and include ``moov`` has been finished. Only box headers are read
(a 4 KiB ``pread`` per box, or per block of small boxes), so a 4 GiB file costs microseconds.
A fragmented MP4 (``moof`` boxes) adds up after every fragment, so it cannot
be judged this way: the verdict says so and other checks decide.
See ISO/IEC 14496-12, section 4.2 (object structure).

A crafted file of tiny boxes (15 MiB of 8-byte ``free`` boxes: two million of
them) must not cost seconds and a list per look (issue 11): the walk keeps
flags and a count, stops after :data:`MAX_BOXES`, and such a file cannot be
judged, like a fragmented one. The caller caches the verdict per snapshot.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ingestd.disk.judged import OpenRule, open_now

_MP4_SUFFIXES = (".mp4", ".mov", ".m4v")
_HEADER = struct.Struct(">I4s")  # 32-bit size, 4-character type
_LARGESIZE = struct.Struct(">Q")  # follows the header when the 32-bit size is 1
_BLOCK = 4096  # bytes of headers read at once
_PRINTABLE = bytes(range(0x20, 0x7F))


#: Past this many top-level boxes the file cannot be judged (a real recording has a handful).
MAX_BOXES = 1_000_000
#: How many box types a verdict lists, for people to read.
SHOWN_BOXES = 16


@dataclass(frozen=True)
class BoxVerdict:
    """The outcome of a box walk; ``reason`` is shown to people in ``ingestd status``."""

    complete: bool | None  # None = cannot be judged (fragmented, or too many boxes)
    reason: str
    boxes: tuple[str, ...]  # the first SHOWN_BOXES top-level box types, in file order


class _Broken(Exception):
    """The box structure is wrong at some offset; carries the human reason."""


class _Boxes:
    """What the walk learnt: flags and a count, so memory stays small whatever the file."""

    __slots__ = ("count", "moof", "moov", "shown")

    def __init__(self) -> None:
        self.count = 0
        self.moov = self.moof = False
        self.shown: list[str] = []

    def add(self, box_type: str) -> None:
        self.count += 1
        self.moov = self.moov or box_type == "moov"
        self.moof = self.moof or box_type == "moof"
        if len(self.shown) < SHOWN_BOXES:
            self.shown.append(box_type)


def is_mp4_name(name: str) -> bool:
    """True for names whose container is ISO-BMFF (.mp4 .mov .m4v, any case)."""
    return name.lower().endswith(_MP4_SUFFIXES)


def check_boxes(path: Path, size: int) -> BoxVerdict:
    """:func:`walk_boxes` of the regular file at ``path`` as it is now (a symlink, FIFO or
    device is refused, never read: see :mod:`ingestd.disk.judged`)."""
    fd, _judged = open_now(path, OpenRule())
    try:
        return walk_boxes(fd, size)
    finally:
        os.close(fd)


def walk_boxes(fd: int, size: int, max_boxes: int | None = None) -> BoxVerdict:
    """Walk the top-level boxes of the first ``size`` bytes of the open file ``fd``.

    ``size`` is the size the caller's settled snapshot saw, so the verdict is
    about that version of the file; a file shorter than ``size`` is reported
    as incomplete. More than ``max_boxes`` (:data:`MAX_BOXES`) boxes: cannot be judged.
    """
    max_boxes = MAX_BOXES if max_boxes is None else max_boxes
    boxes = _Boxes()
    try:
        _walk(fd, size, boxes, max_boxes)
    except _Broken as broken:
        return BoxVerdict(complete=False, reason=str(broken), boxes=tuple(boxes.shown))
    return _judge(boxes, max_boxes)


def _judge(boxes: _Boxes, max_boxes: int) -> BoxVerdict:
    """Decide on boxes that add up to the file size (or that ran past ``max_boxes``)."""
    shown = tuple(boxes.shown)
    if boxes.count > max_boxes:
        reason = f"more than {max_boxes} top-level boxes: cannot be judged by its boxes"
        return BoxVerdict(complete=None, reason=reason, boxes=shown)
    if boxes.moof:
        reason = "fragmented MP4 (moof boxes): cannot be judged by its boxes"
        return BoxVerdict(complete=None, reason=reason, boxes=shown)
    if not boxes.moov:
        return BoxVerdict(complete=False, reason="no moov box", boxes=shown)
    reason = "top-level boxes add up to the file size and include moov"
    return BoxVerdict(complete=True, reason=reason, boxes=shown)


def _walk(fd: int, size: int, boxes: _Boxes, max_boxes: int) -> None:
    """Count each box in ``boxes``; raise _Broken where the structure fails.

    Stops once the count passes ``max_boxes``.
    """
    if size <= 0:
        raise _Broken("empty file")
    headers = _Headers(fd)
    offset = 0
    while offset < size:
        box_type, box_size = _read_box(headers.at(offset), offset, size)
        boxes.add(box_type)
        if offset + box_size > size:
            raise _Broken(
                f"box {box_type!r} at offset {offset} claims {box_size} bytes"
                f" but the file ends at {size}"
            )
        if boxes.count > max_boxes:
            return
        offset += box_size


class _Headers:
    """Box headers read a block at a time: one ``pread`` for many small boxes, not one each."""

    __slots__ = ("block", "fd", "start")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = 0
        self.block = b""

    def at(self, offset: int) -> bytes:
        """Up to the longest header's bytes at ``offset`` (fewer at the end of the file)."""
        end = offset + _HEADER.size + _LARGESIZE.size
        if not (self.start <= offset and end <= self.start + len(self.block)):
            self.start, self.block = offset, os.pread(self.fd, _BLOCK, offset)
        return self.block[offset - self.start : end - self.start]


def _read_box(header: bytes, offset: int, size: int) -> tuple[str, int]:
    """Parse the header read at ``offset``: the box type and its full size in bytes."""
    if len(header) < _HEADER.size or offset + _HEADER.size > size:
        raise _Broken(f"box header at offset {offset} is cut short (the file ends at {size})")
    box_size, raw_type = _HEADER.unpack_from(header)
    if raw_type.translate(None, _PRINTABLE):  # a byte left that is not printable ASCII
        raise _Broken(f"not an MP4 (garbage at offset {offset})")
    box_type = raw_type.decode("ascii")
    header_size = _HEADER.size
    if box_size == 1:
        if len(header) < header_size + _LARGESIZE.size:
            raise _Broken(f"box {box_type!r} at offset {offset} is cut short in its 64-bit size")
        (box_size,) = _LARGESIZE.unpack_from(header, _HEADER.size)
        header_size += _LARGESIZE.size
    elif box_size == 0:
        # "Extends to the end of the file": by definition the last box.
        box_size = size - offset
    if box_size < header_size:
        raise _Broken(f"box {box_type!r} at offset {offset} has an impossible size {box_size}")
    return box_type, box_size
