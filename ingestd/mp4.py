"""Is an MP4/MOV file complete? Judged from its top-level ISO-BMFF boxes alone.

A recorder writes ``mdat`` first and the ``moov`` index last (or patches a
placeholder at the start), so a file whose top-level boxes parse, add up to
its size and include ``moov`` has been finished. Only box headers are read
(one small ``pread`` per box), so a 4 GiB file costs microseconds.
A fragmented MP4 (``moof`` boxes) adds up after every fragment, so it cannot
be judged this way: the verdict says so and other checks decide.
See ISO/IEC 14496-12, section 4.2 (object structure).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

_MP4_SUFFIXES = (".mp4", ".mov", ".m4v")
_HEADER = struct.Struct(">I4s")  # 32-bit size, 4-character type
_LARGESIZE = struct.Struct(">Q")  # follows the header when the 32-bit size is 1


@dataclass(frozen=True)
class BoxVerdict:
    """The outcome of a box walk; ``reason`` is shown to people in ``ingestd status``."""

    complete: bool | None  # None = cannot be judged (fragmented)
    reason: str
    boxes: tuple[str, ...]


class _Broken(Exception):
    """The box structure is wrong at some offset; carries the human reason."""


def is_mp4_name(name: str) -> bool:
    """True for names whose container is ISO-BMFF (.mp4 .mov .m4v, any case)."""
    return name.lower().endswith(_MP4_SUFFIXES)


def check_boxes(path: Path, size: int) -> BoxVerdict:
    """Walk the top-level boxes of the first ``size`` bytes of ``path``.

    ``size`` is the size the caller's settled snapshot saw, so the verdict
    is about that version of the file. Raises OSError if the file cannot be
    opened; a file shorter than ``size`` is reported as incomplete.
    """
    boxes: list[str] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        _walk(fd, size, boxes)
    except _Broken as broken:
        return BoxVerdict(complete=False, reason=str(broken), boxes=tuple(boxes))
    finally:
        os.close(fd)
    return _judge(tuple(boxes))


def _judge(boxes: tuple[str, ...]) -> BoxVerdict:
    """Decide on boxes that add up to the file size."""
    if "moof" in boxes:
        reason = "fragmented MP4 (moof boxes): cannot be judged by its boxes"
        return BoxVerdict(complete=None, reason=reason, boxes=boxes)
    if "moov" not in boxes:
        return BoxVerdict(complete=False, reason="no moov box", boxes=boxes)
    reason = "top-level boxes add up to the file size and include moov"
    return BoxVerdict(complete=True, reason=reason, boxes=boxes)


def _walk(fd: int, size: int, boxes: list[str]) -> None:
    """Append each box type to ``boxes``; raise _Broken where the structure fails."""
    if size <= 0:
        raise _Broken("empty file")
    offset = 0
    while offset < size:
        box_type, box_size = _read_box(fd, offset, size)
        boxes.append(box_type)
        if offset + box_size > size:
            raise _Broken(
                f"box {box_type!r} at offset {offset} claims {box_size} bytes"
                f" but the file ends at {size}"
            )
        offset += box_size


def _read_box(fd: int, offset: int, size: int) -> tuple[str, int]:
    """Read the header at ``offset``: the box type and its full size in bytes."""
    header = os.pread(fd, _HEADER.size + _LARGESIZE.size, offset)
    if len(header) < _HEADER.size or offset + _HEADER.size > size:
        raise _Broken(f"box header at offset {offset} is cut short (the file ends at {size})")
    box_size, raw_type = _HEADER.unpack_from(header)
    if not all(0x20 <= byte <= 0x7E for byte in raw_type):
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
