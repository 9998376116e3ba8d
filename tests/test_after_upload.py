"""After upload: keep, move, delete, keep_for and failed_to, on real files."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import (
    KiB,
    ledger_rows,
    random_file,
    run_once,
    server_videos,
    sha256_file,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


def test_move_keeps_the_relative_path_and_never_overwrites(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    archive = tmp_path / "uploaded"
    (archive / "room 1").mkdir(parents=True)
    (archive / "room 1" / "clip.mp4").write_bytes(b"an older clip of the same name")
    long_stem = "x" * 251  # "x...x.mp4" is 255 bytes: the clash suffix must shorten the stem
    random_file(export / "room 1" / "clip.mp4", 300 * KiB, seed=1)
    (export / "room 1" / "clip.json").write_text('{"name": "Clip"}')
    random_file(export / "room 2" / f"{long_stem}.mp4", 1000, seed=2)
    (archive / "room 2").mkdir()
    (archive / "room 2" / f"{long_stem}.mp4").write_bytes(b"taken")
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": "move", "move_to": str(archive)},
    )
    assert run_once(config, "10s").returncode == 0
    assert (archive / "room 1" / "clip.mp4").read_bytes() == b"an older clip of the same name"
    moved = archive / "room 1" / "clip (1).mp4"
    assert moved.exists() and (archive / "room 1" / "clip (1).json").exists()
    names = sorted(p.name for p in (archive / "room 2").iterdir())
    assert len(names) == 2 and all(len(n.encode()) <= 255 for n in names)
    assert any(n.endswith(" (1).mp4") for n in names)
    assert not (export / "room 1").exists() and not (export / "room 2").exists()
    assert export.is_dir()  # the watch root itself stays
    rows = ledger_rows(tmp_path / "ledger.db")
    assert {r["final_path"] for r in rows} >= {str(moved)}
    assert run_once(config, "10s").returncode == 0  # nothing is uploaded again
    assert len(server.snapshot()["records"]) == 2


def test_delete_removes_video_marker_and_empty_folders(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a" / "b" / "clip.mp4", 1000)
    (export / "a" / "b" / "clip.mp4.done").write_text("")
    random_file(export / "a" / "keep.txt", 10)  # not a video: the folder is not empty
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s", "done_marker": ".done"},
        after_upload={"action": "delete"},
    )
    assert run_once(config, "10s").returncode == 0
    assert not (export / "a" / "b").exists()
    assert (export / "a" / "keep.txt").exists()
    assert server_videos(server)["clip"]["received"] == 1000


def test_keep_for_deletes_the_source_later(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "sub" / "clip.mp4", 1000)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, after_upload={"keep_for": "1s"}
    )
    assert run_once(config, "10s").returncode == 0
    assert (export / "sub" / "clip.mp4").exists()  # kept right after the upload
    time.sleep(1.2)
    assert run_once(config, "10s").returncode == 0  # housekeeping runs at start-up
    assert not (export / "sub").exists()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert row["cleaned_at"] is not None
    assert len(server.snapshot()["records"]) == 1


def test_failed_to_sets_the_file_aside_with_a_reason(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    failed = tmp_path / "failed"
    random_file(export / "room" / "bad.mp4", 300 * KiB)
    server.set_faults(fail_names=["bad"])  # its create-upload 500s; the server answers others
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        upload={"max_attempts": 2},
        after_upload={"action": "delete", "failed_to": str(failed)},
    )
    assert run_once(config, "10s").returncode == 1
    assert (failed / "room" / "bad.mp4").exists()
    text = (failed / "room" / "bad.mp4.error.txt").read_text()
    assert "Reason:" in text and "ingestd retry 1" in text and "500" in text
    assert not (export / "room").exists()


def test_nothing_is_moved_or_deleted_before_done(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 300 * KiB)
    server.set_faults(ready_delay=60.0)
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        upload={"confirm_timeout": "2s"},
        after_upload={"action": "delete"},
    )
    assert run_once(config, "10s").returncode == 1  # never ready: fails not_ready
    assert (export / "clip.mp4").exists()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["fail_reason"]) == ("failed", "not_ready")


def test_a_crash_between_done_and_the_action_only_delays_it(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 1000)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, after_upload={"action": "delete"}
    )
    assert (
        run_once(config, "10s", INGESTD_FAILPOINTS="before_after_action").returncode
        == -signal.SIGKILL
    )
    assert (export / "clip.mp4").exists()
    assert ledger_rows(tmp_path / "ledger.db")[0]["state"] == "done"
    assert run_once(config, "10s").returncode == 0
    assert not (export / "clip.mp4").exists()
    assert len(server.snapshot()["records"]) == 1


def test_keep_is_settled_in_the_same_commit_as_done(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """ "keep" moves nothing: "done" and "after-upload action done" are one commit, so a
    crash right after it leaves nothing for housekeeping and the file where it was."""
    random_file(export / "clip.mp4", 1000)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})  # action: keep
    assert (
        run_once(config, "10s", INGESTD_FAILPOINTS="before_after_action").returncode
        == -signal.SIGKILL
    )
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["after_done"], row["final_path"]) == (
        "done",
        1,
        str(export / "clip.mp4"),
    )
    assert run_once(config, "10s").returncode == 0
    assert (export / "clip.mp4").exists()
    assert len(server.snapshot()["records"]) == 1


def test_a_crash_between_a_move_and_its_commit_finds_the_moved_copy(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """The source is gone and its copy is in move_to, but the ledger never heard: the next
    start recognises the copy (same inode) and commits the move, instead of leaving the
    job alone as "missing"."""
    digest = random_file(export / "room" / "clip.mp4", 1000)
    moved = tmp_path / "moved"
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": "move", "move_to": str(moved)},
    )
    assert run_once(config, "10s", INGESTD_FAILPOINTS="after_move").returncode == -signal.SIGKILL
    copy = moved / "room" / "clip.mp4"
    assert copy.exists() and not (export / "room" / "clip.mp4").exists()
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["state"], row["after_done"]) == ("done", 0)
    assert run_once(config, "10s").returncode == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["after_done"], row["final_path"], row["left_alone"]) == (1, str(copy), None)
    assert sha256_file(copy) == digest
    assert len(server.snapshot()["records"]) == 1
