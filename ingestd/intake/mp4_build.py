"""Building MP4 files from top-level ISO-BMFF boxes: the other side of :mod:`ingestd.intake.mp4`.

The demo and the probe upload send structurally valid MP4s, and the tests
write complete, torn, fragmented and malformed ones; all build them here, so
what the reader judges and what is written agree on one box layout.
"""

from __future__ import annotations

import os
import struct

MiB = 1024 * 1024


def box(box_type: bytes, payload: bytes = b"", *, size: int | None = None) -> bytes:
    """A box with a 32-bit size; ``size`` overrides the true size (0 = to the end of the file)."""
    true_size = 8 + len(payload)
    return struct.pack(">I4s", true_size if size is None else size, box_type) + payload


def large_box(box_type: bytes, payload: bytes = b"", *, size: int | None = None) -> bytes:
    """A box whose size is given in the 64-bit largesize field (32-bit size = 1)."""
    true_size = 16 + len(payload)
    return struct.pack(">I4sQ", 1, box_type, true_size if size is None else size) + payload


def moof(sequence: int) -> bytes:
    """A movie fragment header (``moof`` holding ``mfhd``) with its sequence number."""
    return box(b"moof", box(b"mfhd", struct.pack(">II", 0, sequence)))


FTYP = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41")
MOOV = box(b"moov", box(b"mvhd", bytes(100)))
# A fragmented file's moov announces fragments (mvex); the samples follow in moof + mdat pairs.
FRAG_MOOV = box(b"moov", box(b"mvhd", bytes(100)) + box(b"mvex", box(b"trex", bytes(24))))


def mp4_pieces(size: int, piece: int = MiB) -> list[bytes]:
    """A structurally valid MP4 of ``size`` bytes (ftyp, mdat, moov last), in pieces.

    The first piece is ftyp and the mdat header, then random media data at
    most ``piece`` bytes at a time, then the moov box: written in that order,
    the file is complete only once the last piece is on disk.
    """
    ftyp = box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2")
    moov_payload = 64
    mdat_payload = size - len(ftyp) - 8 - (8 + moov_payload)
    pieces = [ftyp + box(b"mdat", size=8 + mdat_payload)]
    left = mdat_payload
    while left > 0:
        n = min(piece, left)
        pieces.append(os.urandom(n))
        left -= n
    pieces.append(box(b"moov", bytes(moov_payload)))
    return pieces
