"""The fake server's streaming multipart reader, fed real aiohttp StreamReaders piece by piece.

Every body is cut into pieces at every possible place near the delimiters, so
a delimiter split across two reads is found and no byte is lost or added.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from ingestd.fake_valt.multipart import MalformedBody, MultipartStream, PartHeaders, boundary_of

BOUNDARY = b"ingestd0123456789abcdef01234567"


def body(*parts: tuple[bytes, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble + (b"\r\n" if preamble else b"")
    for headers, content in parts:
        out += b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n" + content + b"\r\n"
    return out[:-2] + b"\r\n--" + BOUNDARY + b"--\r\n" + epilogue


def file_headers(name: str = "file", filename: str = "a.ts") -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n"
    ).encode()


async def read_all(raw: bytes, cuts: list[int]) -> list[tuple[PartHeaders, bytes]]:
    """Feed ``raw`` cut at ``cuts`` into a StreamReader; every part and its bytes."""
    loop = asyncio.get_running_loop()
    reader = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    edges = [0, *sorted(set(cuts)), len(raw)]
    for start, end in itertools.pairwise(edges):
        if end > start:
            reader.feed_data(raw[start:end])
    reader.feed_eof()
    stream = MultipartStream(reader, BOUNDARY)
    parts = []
    while (part := await stream.next_part()) is not None:
        pieces = bytearray()
        await stream.stream(pieces.extend)
        parts.append((part, bytes(pieces)))
    return parts


async def test_one_file_part_cut_at_every_place_near_the_delimiters() -> None:
    content = random.Random(1).randbytes(3000)
    raw = body((file_headers(), content))
    closing = raw.rindex(b"\r\n--")
    opening_end = raw.index(b"\r\n\r\n") + 4
    for cut in [*range(0, opening_end + 2), *range(closing - 3, len(raw))]:
        parts = await read_all(raw, [cut])
        assert parts == [(PartHeaders("file", "a.ts"), content)], cut


async def test_random_pieces_and_content_that_looks_like_a_delimiter() -> None:
    rng = random.Random(7)
    # Near-misses of the delimiter inside the content must stay content.
    content = b"\r\n--" + BOUNDARY[:-1] + b"X" + rng.randbytes(5000) + b"\r\n-" + b"\r\n--ingest"
    note = (b'Content-Disposition: form-data; name="note"\r\n', b"hello")
    raw = body(note, (file_headers(), content), preamble=b"ignored preamble", epilogue=b"tail")
    for _ in range(200):
        cuts = [rng.randrange(len(raw)) for _ in range(rng.randrange(1, 40))]
        parts = await read_all(raw, cuts)
        assert parts == [
            (PartHeaders("note", None), b"hello"),
            (PartHeaders("file", "a.ts"), content),
        ]


async def test_a_part_without_headers_and_transport_padding() -> None:
    raw = b"--" + BOUNDARY + b"  \t\r\n\r\nbare\r\n--" + BOUNDARY + b"--"
    assert await read_all(raw, [3, 40]) == [(PartHeaders(None, None), b"bare")]


async def test_an_empty_file_part() -> None:
    raw = body((file_headers(filename="empty.ts"), b""))
    assert await read_all(raw, []) == [(PartHeaders("file", "empty.ts"), b"")]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (body((file_headers(), b"data")).rsplit(b"\r\n--", 1)[0], "ended inside a part"),
        (b"--" + BOUNDARY + b"\r\nContent-Disposition: x", "ended inside part headers"),
        (b"--" + BOUNDARY + b"XY", "not followed by CRLF"),
        (b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--", "colon"),
        (b"--" + BOUNDARY + b"\r\nA: " + b"b" * 20000, "longer than 16 KiB"),
        (b"no delimiter at all", "ended inside a part"),
    ],
)
async def test_malformed_bodies_are_refused_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedBody, match=why):
        await read_all(raw, [len(raw) // 2])


def test_the_boundary_comes_from_the_content_type() -> None:
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    with pytest.raises(MalformedBody, match="boundary"):
        boundary_of("multipart/form-data")
    with pytest.raises(MalformedBody, match="boundary"):
        boundary_of("multipart/form-data; boundary=" + "x" * 71)
