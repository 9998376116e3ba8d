"""Finished checks on real files: MP4 boxes, open writers seen through /proc, done markers."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ingestd.intake.finished import FileSnapshot, FinishedChecks, open_writers, snapshot
from ingestd.intake.mp4 import check_boxes, is_mp4_name
from ingestd.intake.mp4_build import FTYP, MOOV, box, large_box

NOBODY = "65534"

# --- building MP4 files ---------------------------------------------------------------------------


MDAT = box(b"mdat", bytes(5000))


def write(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def verdict_of(path: Path) -> tuple[bool | None, str, tuple[str, ...]]:
    verdict = check_boxes(path, path.stat().st_size)
    return verdict.complete, verdict.reason, verdict.boxes


# --- mp4.check_boxes ------------------------------------------------------------------------------


def test_complete_with_moov_last(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", FTYP, MDAT, MOOV)
    assert verdict_of(path) == (
        True,
        "top-level boxes add up to the file size and include moov",
        ("ftyp", "mdat", "moov"),
    )


def test_complete_with_moov_first_and_free(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mov", FTYP, MOOV, box(b"free", bytes(8)), box(b"wide"), MDAT)
    assert verdict_of(path)[0] is True


def test_largesize_mdat(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", FTYP, large_box(b"mdat", bytes(3000)), MOOV)
    assert verdict_of(path)[:1] == (True,)


def test_size_zero_last_box_extends_to_end(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", FTYP, MOOV, box(b"mdat", bytes(777), size=0))
    assert verdict_of(path) == (
        True,
        "top-level boxes add up to the file size and include moov",
        ("ftyp", "moov", "mdat"),
    )


def test_size_zero_box_swallowing_moov_is_incomplete(tmp_path: Path) -> None:
    # A recorder that has not patched its mdat size yet: the moov is "inside" mdat.
    path = write(tmp_path / "a.mp4", FTYP, box(b"mdat", bytes(777), size=0), MOOV)
    assert verdict_of(path)[:2] == (False, "no moov box")


def test_mdat_claiming_more_than_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.mp4", FTYP, box(b"mdat", bytes(5000 - len(FTYP) - 8), size=1_000_000)
    )
    assert path.stat().st_size == 5000
    offset = len(FTYP)
    assert verdict_of(path) == (
        False,
        f"box 'mdat' at offset {offset} claims 1000000 bytes but the file ends at 5000",
        ("ftyp", "mdat"),
    )


def test_largesize_claiming_more_than_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", FTYP, large_box(b"mdat", bytes(100), size=1 << 40), MOOV)
    complete, reason, _ = verdict_of(path)
    assert complete is False
    assert reason.startswith(f"box 'mdat' at offset {len(FTYP)} claims {1 << 40} bytes")


def test_missing_moov(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", FTYP, MDAT)
    assert verdict_of(path) == (False, "no moov box", ("ftyp", "mdat"))


def test_garbage(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", b"\x00\x00\x00\x10\xff\xfe\x01\x02" + bytes(8))
    assert verdict_of(path) == (False, "not an MP4 (garbage at offset 0)", ())
    text = write(tmp_path / "b.mp4", b"hello, this is a text file\n")
    assert verdict_of(text)[0] is False


def test_garbage_after_boxes(tmp_path: Path) -> None:
    # Preallocated zeros after the last written box.
    path = write(tmp_path / "a.mp4", FTYP, MDAT, MOOV, bytes(64))
    offset = len(FTYP) + len(MDAT) + len(MOOV)
    assert verdict_of(path)[:2] == (False, f"not an MP4 (garbage at offset {offset})")


@pytest.mark.parametrize(
    ("tail", "reason_start"),
    [
        (b"\x00\x00", "box header at offset"),
        (box(b"free", size=4), "box 'free' at offset"),
        (large_box(b"mdat", size=8), "box 'mdat' at offset"),
        (struct.pack(">I4sI", 1, b"mdat", 0), "box 'mdat' at offset"),
    ],
)
def test_cut_short_and_impossible_sizes(tmp_path: Path, tail: bytes, reason_start: str) -> None:
    path = write(tmp_path / "a.mp4", FTYP, MOOV, tail)
    complete, reason, _ = verdict_of(path)
    assert complete is False
    assert reason.startswith(reason_start)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4")
    assert verdict_of(path) == (False, "empty file", ())


def test_judged_at_the_given_size(tmp_path: Path) -> None:
    # The file grew after the caller's snapshot: the verdict is about the snapshot.
    path = write(tmp_path / "a.mp4", FTYP, MDAT, MOOV, b"junk appended later")
    settled = len(FTYP) + len(MDAT) + len(MOOV)
    assert check_boxes(path, settled).complete is True
    # A snapshot size past the real end: the last header is cut short.
    assert check_boxes(path, settled + 100).complete is False


def test_fragmented_cannot_be_judged(tmp_path: Path) -> None:
    moof = box(b"moof", box(b"mfhd", bytes(8)))
    path = write(tmp_path / "a.mp4", FTYP, MOOV, moof, MDAT, moof, MDAT, box(b"mfra", bytes(8)))
    complete, reason, boxes = verdict_of(path)
    assert complete is None
    assert reason == "fragmented MP4 (moof boxes): cannot be judged by its boxes"
    assert boxes == ("ftyp", "moov", "moof", "mdat", "moof", "mdat", "mfra")


def test_fragmented_with_a_torn_fragment_is_incomplete(tmp_path: Path) -> None:
    moof = box(b"moof", box(b"mfhd", bytes(8)))
    path = write(tmp_path / "a.mp4", FTYP, MOOV, moof, MDAT[:100])
    assert verdict_of(path)[0] is False


def test_four_gib_file_reads_only_headers(tmp_path: Path) -> None:
    path = tmp_path / "big.mp4"
    mdat_size = (4 << 30) + 12345
    with path.open("wb") as handle:
        handle.write(FTYP + struct.pack(">I4sQ", 1, b"mdat", mdat_size))
        handle.seek(len(FTYP) + mdat_size)  # sparse: the payload is never written
        handle.write(MOOV)
    started = time.monotonic()
    verdict = check_boxes(path, path.stat().st_size)
    assert time.monotonic() - started < 0.5
    assert verdict.complete is True
    assert verdict.boxes == ("ftyp", "mdat", "moov")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.mp4", True), ("A.MOV", True), ("x.M4v", True), ("a.mkv", False), ("mp4", False)],
)
def test_is_mp4_name(name: str, expected: bool) -> None:
    assert is_mp4_name(name) is expected


# --- snapshot -------------------------------------------------------------------------------------


def test_snapshot(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", b"12345")
    info = path.stat()
    assert snapshot(path) == FileSnapshot(
        size=5, mtime_ns=info.st_mtime_ns, inode=info.st_ino, device=info.st_dev
    )
    assert snapshot(tmp_path / "missing.mp4") is None
    assert snapshot(path / "below-a-file") is None
    assert snapshot(tmp_path) is None
    os.mkfifo(tmp_path / "fifo")
    assert snapshot(tmp_path / "fifo") is None
    # A replaced file has a new inode, even at the same size.
    replacement = write(tmp_path / "b.mp4", b"54321")
    replacement.replace(path)
    renewed = snapshot(path)
    assert renewed is not None
    assert renewed.size == 5
    assert renewed.inode != info.st_ino


# --- open_writers: real processes -----------------------------------------------------------------

HOLD_OPEN = """
import sys, time
handle = open(sys.argv[1], sys.argv[2])
print("ready", flush=True)
time.sleep(60)
"""


@contextmanager
def holding(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds ``path`` open in ``mode`` until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(path), mode],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            yield child
        finally:
            child.kill()


def writer_pids(path: Path) -> list[int]:
    return [pid for pid, _ in open_writers(path).writers]


@pytest.mark.parametrize("mode", ["ab", "r+b", "wb"])
def test_writer_is_found_and_gone_after_exit(tmp_path: Path, mode: str) -> None:
    path = write(tmp_path / "clip.mp4", b"data")
    with holding(path, mode) as child:
        verdict = open_writers(path)
        assert child.pid in [pid for pid, _ in verdict.writers]
        comm = dict(verdict.writers)[child.pid]
        assert comm.startswith("python")
        assert verdict.all_visible  # we are root
    child.wait()
    assert writer_pids(path) == []


def test_reader_is_not_a_writer(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", b"data")
    with holding(path, "rb") as child:
        assert child.pid not in writer_pids(path)
        assert writer_pids(path) == []


def test_name_with_space_and_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "room 3\nclip (1).mp4", b"data")
    other = write(tmp_path / "room 3", b"other")
    with holding(path, "ab") as child:
        assert writer_pids(path) == [child.pid]
        assert writer_pids(other) == []


def test_deleted_and_recreated_file_is_a_different_file(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", b"old")
    with holding(path, "ab") as child:
        path.unlink()
        write(path, b"new")
        assert child.pid not in writer_pids(path)


def test_hardlink_is_the_same_file(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", b"data")
    alias = tmp_path / "recording.tmp"
    alias.hardlink_to(path)
    with holding(alias, "ab") as child:
        assert writer_pids(path) == [child.pid]


def test_own_process_counts(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", b"data")
    with path.open("ab"):
        assert os.getpid() in writer_pids(path)
    assert os.getpid() not in writer_pids(path)


def test_missing_file_has_no_writers(tmp_path: Path) -> None:
    verdict = open_writers(tmp_path / "missing.mp4")
    assert verdict.writers == ()
    assert verdict.all_visible


# --- FinishedChecks -------------------------------------------------------------------------------


class Logged:
    """A log callback that remembers what it was given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def __call__(self, event: str, fields: dict[str, object]) -> None:
        self.events.append((event, fields))

    def names(self) -> list[str]:
        return [event for event, _ in self.events]


def checks(**overrides: object) -> FinishedChecks:
    options: dict[str, object] = {
        "check_open_writers": False,
        "check_container": False,
        "done_marker": None,
    }
    options.update(overrides)
    return FinishedChecks(**options)  # type: ignore[arg-type]


def why(checker: FinishedChecks, path: Path) -> str | None:
    return checker.why_not_finished(path, path.stat().st_size)


def test_done_marker(tmp_path: Path) -> None:
    path = write(tmp_path / "CLIP.mp4", FTYP, MDAT, MOOV)
    checker = checks(done_marker=".done")
    assert checker.marker_path(path) == tmp_path / "CLIP.mp4.done"
    assert why(checker, path) == "waiting for marker CLIP.mp4.done"
    (tmp_path / "CLIP.done").touch()  # the stem's marker is not this file's marker
    assert why(checker, path) == "waiting for marker CLIP.mp4.done"
    (tmp_path / "CLIP.mp4.done").touch()
    assert why(checker, path) is None


def test_no_marker_configured(tmp_path: Path) -> None:
    path = write(tmp_path / "CLIP.mp4", b"x")
    assert checks(done_marker=None).marker_path(path) is None
    assert checks(done_marker="").marker_path(path) is None


def test_container_reasons(tmp_path: Path) -> None:
    checker = checks(check_container=True)
    assert why(checker, write(tmp_path / "ok.MP4", FTYP, MDAT, MOOV)) is None
    assert why(checker, write(tmp_path / "half.mp4", FTYP, MDAT)) == "no moov box"
    assert why(checker, write(tmp_path / "junk.mov", b"\xff" * 32)) == (
        "not an MP4 (garbage at offset 0)"
    )
    # Only MP4/MOV/M4V have boxes to judge.
    assert why(checker, write(tmp_path / "junk.mkv", b"\xff" * 32)) is None
    # Judged at the size the caller settled on.
    path = write(tmp_path / "grown.mp4", FTYP, MDAT, MOOV, b"more")
    assert checker.why_not_finished(path, len(FTYP) + len(MDAT) + len(MOOV)) is None


def test_container_unreadable(tmp_path: Path) -> None:
    checker = checks(check_container=True)
    reason = checker.why_not_finished(tmp_path / "gone.mp4", 100)
    assert reason is not None
    assert reason.startswith("cannot read the file")


def test_fragmented_passes_and_is_logged_once_per_path(tmp_path: Path) -> None:
    logged = Logged()
    checker = checks(check_container=True, log=logged)
    moof = box(b"moof", bytes(8))
    first = write(tmp_path / "frag1.mp4", FTYP, MOOV, moof, MDAT)
    second = write(tmp_path / "frag2.mp4", FTYP, MOOV, moof, MDAT)
    assert why(checker, first) is None
    assert why(checker, first) is None
    assert why(checker, second) is None
    assert logged.names() == ["file.container_unknown", "file.container_unknown"]
    assert logged.events[0][1]["path"] == str(first)


def test_writer_reason(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", FTYP, MDAT, MOOV)
    checker = checks(check_open_writers=True, check_container=True)
    with holding(path, "ab") as child:
        reason = why(checker, path)
        assert reason is not None
        assert reason.startswith(f"open for writing by pid {child.pid} (python")
    child.wait()
    assert why(checker, path) is None


def test_all_switches_off(tmp_path: Path) -> None:
    path = write(tmp_path / "clip.mp4", b"\xff" * 32)
    with holding(path, "ab"):
        assert why(checks(), path) is None
        assert why(checks(check_open_writers=True), path) is not None
        assert why(checks(check_container=True), path) is not None


# --- a daemon that is not root cannot see root's processes ---------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder uid 65534 can reach (pytest's tmp_path lives under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="ingestd-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


CHECK_AS_NOBODY = """
import json, os, sys
from pathlib import Path
from ingestd.intake.finished import FinishedChecks, open_writers
path = Path(sys.argv[1])
logged = []
checks = FinishedChecks(
    check_open_writers=True, check_container=False, done_marker=None,
    log=lambda event, fields: logged.append(event),
)
reasons = [checks.why_not_finished(path, 4) for _ in range(3)]
verdict = open_writers(path)
print(json.dumps({
    "uid": os.geteuid(), "writers": verdict.writers, "all_visible": verdict.all_visible,
    "reasons": reasons, "logged": logged,
}))
"""


def test_non_root_view(shared_dir: Path) -> None:
    assert os.geteuid() == 0, "needs root: the writer must belong to a user nobody cannot see"
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop privileges"
    path = write(shared_dir / "clip.mp4", b"data")
    path.chmod(0o644)
    with holding(path, "ab") as child:
        assert writer_pids(path) == [child.pid]  # root sees it
        drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        result = subprocess.run(
            [*drop, sys.executable, "-c", CHECK_AS_NOBODY, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            check=False,
        )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["uid"] == int(NOBODY)
    assert answer["writers"] == []
    assert answer["all_visible"] is False
    assert answer["reasons"] == [None, None, None]
    assert answer["logged"] == ["finished.writers_not_visible"]
