"""Each name change a ledger commit depends on survives a power cut (the power-cut file system).

The campaign found these undone after a cut, the ledger claiming otherwise:
a move in one file system and across two, a deletion (``action: delete`` and
``keep_for``), ``NAME.error.txt`` (empty under its final name in the ordered
mode), and backup rotation. Each test does the step as the daemon does it,
cuts the power right after, and looks at what the disk kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingestd.disk.moves import Identity
from ingestd.disk.private import write_private
from ingestd.ledger.backup import existing_backups, rotate
from ingestd.upload.after_upload import Belongings, _delete, _move_to
from powercut import PowerCutMount, mount

NO_COMPANIONS = Belongings(done_marker=None, sidecars=False)


@pytest.fixture
def second_disk(tmp_path: Path) -> Iterator[PowerCutMount]:
    with mount(tmp_path / "backing2", tmp_path / "mnt2") as handle:
        yield handle


def _durable_file(path: Path, data: bytes) -> Identity:
    """A recording that finished arriving: its bytes and every name up to the mount fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    for folder in path.parents:
        _fsync(folder)
        if os.path.ismount(folder):
            break
    return Identity.of(os.lstat(path))


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_move_within_one_file_system_survives_a_cut(disk: PowerCutMount) -> None:
    root = disk.mountpoint / "export"
    clip = root / "room" / "clip.mp4"
    identity = _durable_file(clip, b"recording" * 1000)
    moved = _move_to(clip, root, disk.mountpoint / "archive", NO_COMPANIONS, identity)
    disk.cut()
    assert moved.destination.read_bytes() == b"recording" * 1000
    assert not clip.exists()


def test_a_move_across_file_systems_survives_a_cut(
    disk: PowerCutMount, second_disk: PowerCutMount
) -> None:
    root = disk.mountpoint / "export"
    clip = root / "room" / "clip.mp4"
    identity = _durable_file(clip, b"recording" * 1000)
    moved = _move_to(clip, root, second_disk.mountpoint / "archive", NO_COMPANIONS, identity)
    second_disk.cut()
    disk.cut()
    assert moved.destination.read_bytes() == b"recording" * 1000
    assert not clip.exists()


def test_a_deletion_survives_a_cut(disk: PowerCutMount) -> None:
    root = disk.mountpoint / "export"
    clip = root / "room" / "clip.mp4"
    identity = _durable_file(clip, b"recording")
    _durable_file(root / "room" / "other.mp4", b"another recording")  # the folder stays
    _delete(clip, root, NO_COMPANIONS, identity)
    disk.cut()
    assert not clip.exists()
    assert (root / "room" / "other.mp4").exists()


def test_an_error_note_is_whole_after_a_cut(disk: PowerCutMount) -> None:
    note = disk.mountpoint / "failed" / "clip.mp4.error.txt"
    _durable_file(note.with_name("clip.mp4"), b"recording")
    write_private(note, "ingestd could not upload this recording\n")
    disk.cut()
    assert note.read_text() == "ingestd could not upload this recording\n"
    assert [p.name for p in note.parent.iterdir() if p.name.startswith(".")] == []


def test_a_backup_rotation_survives_a_cut(disk: PowerCutMount) -> None:
    ledger = disk.mountpoint / "state" / "ledger.db"
    for day in range(1, 6):
        _durable_file(ledger.with_name(f"ledger.db.backup-202611{day:02d}-030000"), b"backup")
    removed = rotate(ledger, 2)
    disk.cut()
    assert len(removed) == 3
    assert [p.name for p in existing_backups(ledger)] == [
        "ledger.db.backup-20261104-030000",
        "ledger.db.backup-20261105-030000",
    ]
