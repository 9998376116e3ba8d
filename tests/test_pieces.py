"""Reading a file for upload: pieces, the hash across chunks, the piece read ahead."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from ingestd.disk.judged import FileSnapshot, OpenRule, snapshot
from ingestd.errors import SourceChanged, SourceMissing
from ingestd.upload import pieces
from ingestd.upload.pieces import PIECE_SIZE, Sending, Source, hash_prefix

RULE = OpenRule()


def _judged(path: Path) -> FileSnapshot:
    """The file as it is now (a missing one: a snapshot no file has)."""
    return snapshot(path) or FileSnapshot(0, 0, 0, 0)


CHUNK = 3 * PIECE_SIZE // 2  # chunks and pieces out of step on purpose


async def send_all(source: Source, size: int, *, ahead: bool) -> tuple[bytes, str, list[int]]:
    """Every chunk's pieces as the uploader takes them; the bytes, the hash, piece sizes."""
    hasher = hashlib.sha256()
    sent, sizes = bytearray(), []
    for start in range(0, size, CHUNK):
        end = min(size, start + CHUNK)
        sending = Sending(hasher)
        next_end = min(size, end + CHUNK) if ahead else None
        async for piece in source.pieces(sending, start, end, next_end=next_end):
            sent += piece
            sizes.append(len(piece))
        await asyncio.sleep(0)  # the server's answer: the read-ahead runs here
        hasher = sending.hasher
    return bytes(sent), hasher.hexdigest(), sizes


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("cached", [True, False])
async def test_every_byte_once_and_the_hash_of_the_whole_file(
    tmp_path: Path, ahead: bool, cached: bool
) -> None:
    data = os.urandom(5 * PIECE_SIZE + 12345)
    path = tmp_path / "a.ts"
    path.write_bytes(data)
    source = await Source.open(path, _judged(path), RULE)
    if not cached:
        source._file.nowait = False  # as on a file system without RWF_NOWAIT: a thread reads
    try:
        sent, digest, sizes = await send_all(source, len(data), ahead=ahead)
    finally:
        source.close()
    assert sent == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert max(sizes) <= PIECE_SIZE


async def test_the_piece_read_ahead_is_what_is_sent_and_hashed(tmp_path: Path) -> None:
    """The next chunk's first piece is read while the server answers: what goes out is
    that piece, and the hash covers exactly the bytes that went out."""
    data = bytearray(os.urandom(2 * CHUNK))
    path = tmp_path / "a.ts"
    path.write_bytes(data)
    source = await Source.open(path, _judged(path), RULE)
    try:
        first = Sending(hashlib.sha256())
        async for _ in source.pieces(first, 0, CHUNK, next_end=2 * CHUNK):
            pass
        await asyncio.sleep(0)
        with open(path, "r+b") as handle:  # changed after the read-ahead
            handle.seek(CHUNK)
            handle.write(b"X" * 10)
        second = Sending(first.hasher)
        sent = b"".join([bytes(p) async for p in source.pieces(second, CHUNK, 2 * CHUNK)])
    finally:
        source.close()
    assert sent == bytes(data[CHUNK:])  # the piece read ahead, not the new bytes
    assert second.hasher.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_chunk_sent_again_reads_its_bytes_anew(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    path = tmp_path / "a.ts"
    path.write_bytes(data)
    source = await Source.open(path, _judged(path), RULE)
    try:
        base = hashlib.sha256()
        for _ in range(2):  # the same chunk twice (a 401 and a fresh login)
            sending = Sending(base)
            sent = b"".join(
                [bytes(p) async for p in source.pieces(sending, 0, CHUNK, next_end=2 * CHUNK)]
            )
            await asyncio.sleep(0)
            assert sent == data[:CHUNK]
            assert sending.hasher.hexdigest() == hashlib.sha256(data[:CHUNK]).hexdigest()
        assert base.hexdigest() == hashlib.sha256().hexdigest()  # the base is never fed
    finally:
        source.close()


async def test_a_file_shorter_than_its_chunk_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "a.ts"
    path.write_bytes(b"x" * 1000)
    source = await Source.open(path, _judged(path), RULE)
    try:
        with pytest.raises(SourceChanged, match="1000 bytes early"):
            async for _ in source.pieces(Sending(hashlib.sha256()), 0, 2000):
                pass
    finally:
        source.close()


async def test_a_missing_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        await Source.open(tmp_path / "gone.ts", _judged(tmp_path / "gone.ts"), RULE)


def test_hash_prefix_resumes_the_full_content_hash(tmp_path: Path) -> None:
    data = os.urandom(3 * PIECE_SIZE)
    path = tmp_path / "a.ts"
    path.write_bytes(data)
    hasher = hash_prefix(path, 2 * PIECE_SIZE + 7, _judged(path), RULE)
    hasher.update(data[2 * PIECE_SIZE + 7 :])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    with pytest.raises(SourceChanged):
        hash_prefix(path, len(data) + 1, _judged(path), RULE)


async def test_between_looks_at_the_path_the_open_file_tells_whether_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk's look at the file is an fstat of the open file: it tells a change of size
    or mtime, and a link gone or added (deleted, replaced by a rename); the path itself
    is looked at every LOOK_EVERY seconds, and wherever fstat might wait."""
    path = tmp_path / "a.ts"
    path.write_bytes(b"x" * 1000)
    judged = _judged(path)
    source = await Source.open(path, judged, RULE)
    try:
        assert source.unchanged(judged)
        os.link(path, tmp_path / "b.ts")
        assert not source.unchanged(judged)  # a link more: look at the path
        (tmp_path / "b.ts").unlink()
        assert source.unchanged(judged)
        os.rename(tmp_path / "a.ts", tmp_path / "moved.ts")
        assert source.unchanged(judged)  # renamed away: the links are the same...
        monkeypatch.setattr(pieces, "LOOK_EVERY", 0.0)
        assert not source.unchanged(judged)  # ...so the path is looked at, every second
        monkeypatch.undo()
        os.rename(tmp_path / "moved.ts", tmp_path / "a.ts")
        path.write_bytes(b"y" * 10)  # the same inode, another size
        assert not source.unchanged(judged)
        current = _judged(path)
        assert source.unchanged(current)
        path.unlink()
        assert not source.unchanged(current)  # deleted: no link left
        source._file.nowait = False  # a file system without RWF_NOWAIT: the path, always
        assert not source.unchanged(judged)
    finally:
        source.close()
    assert not source.unchanged(judged)
