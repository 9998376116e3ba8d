"""The body of a chunk upload: one multipart/form-data ``file`` field, framed by hand.

The chunk is streamed piece by piece from the file (aiohttp's ``FormData``
would want it whole), so only the frame around it is built here. The field's
name is a server assumption and lives in :mod:`ingestd.valt.rules`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ingestd.valt import rules as valt_rules

__all__ = ["FramedChunk", "PieceSource", "frame_chunk", "multipart_frame", "new_boundary"]

# Yields a body's pieces each time it is called: a retried request reads them again.
PieceSource = Callable[[], AsyncIterator[bytes | memoryview]]


@dataclass(frozen=True, slots=True)
class FramedChunk:
    """A chunk inside its multipart frame: the pieces to send, their total length, and
    the Content-Type that names the boundary."""

    pieces: PieceSource
    length: int
    content_type: str


def new_boundary() -> str:
    """A boundary no recording will contain by chance (24 random hex digits)."""
    return "ingestd" + secrets.token_hex(12)


def multipart_frame(boundary: str, filename: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file in a one-field multipart body.

    The filename is escaped the way browsers do (HTML's form encoding):
    ``"`` and line breaks percent-encoded, everything else raw UTF-8.
    """
    safe = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{valt_rules.UPLOAD_FIELD}"; filename="{safe}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode("utf-8", "surrogateescape")
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail


def frame_chunk(filename: str, pieces: PieceSource, length: int) -> FramedChunk:
    """``length`` bytes from ``pieces`` as the multipart ``file`` field named ``filename``."""
    boundary = new_boundary()
    head, tail = multipart_frame(boundary, filename)

    async def framed() -> AsyncIterator[bytes | memoryview]:
        yield head
        async for piece in pieces():
            yield piece
        yield tail

    return FramedChunk(
        framed, len(head) + length + len(tail), f"multipart/form-data; boundary={boundary}"
    )
