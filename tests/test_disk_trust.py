"""Nothing on the disk is trusted (issue 11): one bad file is that file's outcome, a path
swapped after it was judged is never read, a crafted MP4 costs one bounded walk, and the
daemon's memory of files holds only what is there."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    NOBODY,
    assert_no_event,
    intake_for_tests,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    run_once,
    server_videos,
    sha256_file,
    start_as_nobody,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from ledger_support import set_state

from ingestd.disk.judged import OpenRule, open_judged, snapshot
from ingestd.errors import FileRefused, SourceMissing
from ingestd.fake_valt import FakeValtThread
from ingestd.intake import finished, mp4, settle
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.identity import fingerprint, full_sha256
from ingestd.intake.sidecar import examine_sidecar, find_sidecar
from ingestd.ledger.model import State
from ingestd.upload.pieces import Sending, Source, hash_prefix

SECRET = "root:$6$PRIVATE-HASH-never-to-be-seen:19000:0:99999:7:::"
DEEP = "[" * 100_000 + "]" * 100_000


def _old(path: Path, seconds: float = 60.0) -> Path:
    """Backdate ``path`` (not following a symlink): written long ago, settled."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def _rows_by_name(tmp_path: Path) -> dict[str, dict[str, object]]:
    return {Path(str(row["path"])).name: row for row in ledger_rows(tmp_path / "ledger.db")}


def _private_file(tmp_path: Path, text: str = SECRET) -> Path:
    """A 0600 file outside the watch folder."""
    secret = tmp_path / "private" / "shadow"
    secret.parent.mkdir()
    secret.write_text(text + "\n")
    secret.chmod(0o600)
    return secret


# --- 1. a pathological sidecar is its own file's outcome -------------------------------------


def test_deeply_nested_sidecars_fail_their_jobs_and_another_file_uploads(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    for index, name in enumerate(["deep-json.mp4", "deep-yaml.mp4", "good.mp4"]):
        random_file(export / name, 2000 + index, seed=index)
    (export / "deep-json.json").write_text(DEEP)
    (export / "deep-yaml.yaml").write_text(DEEP)
    for sidecar in ("deep-json.json", "deep-yaml.yaml"):
        _old(export / sidecar)  # older than the grace: malformed for good, not half-written
    result = run_once(write_config(tmp_path, server.url), "30s")
    assert result.returncode == 1, result.stderr
    assert set(server_videos(server)) == {"good"}
    rows = _rows_by_name(tmp_path)
    assert rows["good.mp4"]["state"] == "done"
    for name, sidecar in (("deep-json.mp4", "deep-json.json"), ("deep-yaml.mp4", "deep-yaml.yaml")):
        assert rows[name]["state"] == "failed", rows[name]
        assert rows[name]["fail_reason"] == "bad_sidecar", rows[name]
        assert f"sidecar {sidecar}: is nested too deeply to read" in str(rows[name]["fail_detail"])
    assert "RecursionError" not in result.stdout + result.stderr


async def test_an_unexpected_error_judging_one_file_does_not_stop_the_others(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever one file's judging raises, that file waits (with the reason) and the
    pass goes on to queue the others."""
    intake, ledger = await intake_for_tests(tmp_path, settle="0s")
    try:
        random_file(export / "bad.mkv", 100, seed=1)
        random_file(export / "fine.mkv", 200, seed=2)
        assert await intake.scan("startup") == 2
        real = settle.sidecar_wait_reason

        def exploding(video: Path, *args: object) -> str | None:
            if video.name == "bad.mkv":
                raise RuntimeError("a bug")
            return real(video, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(settle, "sidecar_wait_reason", exploding)
        await intake.settle()
        await intake.settle()
        jobs = {Path(job.path).name: job for job in await ledger.jobs_in(list(State))}
        assert jobs["fine.mkv"].state == State.QUEUED
        assert jobs["bad.mkv"].state == State.WAITING
        assert jobs["bad.mkv"].wait_reason == (
            "cannot check the file (internal error: RuntimeError; see the log)"
        )
    finally:
        await ledger.close()


# --- 3. a path swapped after it was judged is never read -------------------------------------


def test_a_symlink_swapped_in_after_discovery_is_not_uploaded(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """``mv -T`` puts a symlink to a 0600 file outside the watch folder where a found
    recording was. The daemon runs as root, so only the rule stops the read."""
    secret = _private_file(tmp_path, SECRET * 100)
    clip = export / "clip.mp4"
    random_file(clip, 5000, seed=1)
    config = write_config(tmp_path, server.url, watch={"settle": "3s"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: "clip.mp4" in _rows_by_name(tmp_path), timeout=60)
        link = export / ".swap"
        link.symlink_to(secret)
        subprocess.run(["mv", "-T", str(link), str(clip)], check=True)
        random_file(export / "other.mp4", 3000, seed=2)  # intake goes on
        wait_for(lambda: "other" in server_videos(server), timeout=60)
        wait_for(lambda: "clip.mp4" not in _rows_by_name(tmp_path), timeout=60)  # vanished
    finally:
        stop_process(daemon)
    assert set(server_videos(server)) == {"other"}
    private = secret.read_bytes()[:64]
    for held in (tmp_path / "server").rglob("*"):
        if held.is_file():
            assert private not in held.read_bytes(), held


def test_swapped_files_are_refused_by_every_reader(tmp_path: Path, export: Path) -> None:
    """The file was judged, then the path was swapped: a symlink, a FIFO, another file.
    Every reader refuses at once (a FIFO is never waited on), the private bytes unread."""
    secret = _private_file(tmp_path)
    clip = export / "clip.mp4"
    random_file(clip, 3000, seed=1)
    judged = snapshot(clip)
    assert judged is not None
    os.link(clip, tmp_path / "kept")  # its inode number is not reused by the new file below
    rule = OpenRule.for_watch([export], follow_symlinks=False)

    def readers() -> list[object]:
        outcomes: list[object] = []
        for read in (
            lambda: fingerprint(clip, judged, rule),
            lambda: full_sha256(clip, judged, rule),
            lambda: hash_prefix(clip, 10, judged, rule),
            lambda: os.close(open_judged(clip, judged, rule)),
        ):
            try:
                outcomes.append(read())
            except (FileRefused, SourceMissing) as refused:
                outcomes.append(refused)
        return outcomes

    clip.unlink()
    clip.symlink_to(secret)
    assert all(isinstance(outcome, FileRefused) for outcome in readers())
    assert snapshot(clip) is None  # a symlink is not a file to judge

    clip.unlink()
    os.mkfifo(clip)
    outcomes: list[object] = []
    reading = threading.Thread(target=lambda: outcomes.extend(readers()), daemon=True)
    reading.start()
    reading.join(timeout=60)
    assert not reading.is_alive(), "a reader blocked on a FIFO"
    assert len(outcomes) == 4 and all(isinstance(o, FileRefused) for o in outcomes), outcomes

    clip.unlink()
    random_file(clip, 3000, seed=1)  # the same bytes, but another file
    assert all(isinstance(outcome, FileRefused) for outcome in readers())


async def test_the_upload_reads_the_descriptor_of_the_judged_file(
    tmp_path: Path, export: Path
) -> None:
    secret = _private_file(tmp_path)
    clip = export / "clip.mp4"
    random_file(clip, 3000, seed=1)
    judged = snapshot(clip)
    assert judged is not None
    rule = OpenRule.for_watch([export], follow_symlinks=False)
    original = clip.read_bytes()
    source = await Source.open(clip, judged, rule)
    try:
        clip.unlink()
        clip.symlink_to(secret)  # swapped once the upload has it open: it reads what it judged
        sending = Sending(hashlib.sha256())
        sent = b"".join([bytes(piece) async for piece in source.pieces(sending, 0, 3000)])
        assert sent == original
    finally:
        source.close()
    with pytest.raises(FileRefused):
        await Source.open(clip, judged, rule)


def test_a_folder_swapped_for_a_symlink_out_of_the_watch_folder_is_refused(
    tmp_path: Path, export: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    room = export / "room"
    room.mkdir()
    random_file(room / "clip.mp4", 1000, seed=1)
    judged = snapshot(room / "clip.mp4")
    assert judged is not None
    os.rename(room / "clip.mp4", outside / "clip.mp4")  # the same inode, elsewhere
    room.rmdir()
    room.symlink_to(outside)
    with pytest.raises(FileRefused, match="outside the watch folder"):
        open_judged(room / "clip.mp4", judged, OpenRule.for_watch([export], False))
    # With follow_symlinks the link is the user's choice: the same file is read.
    os.close(open_judged(room / "clip.mp4", judged, OpenRule.for_watch([export], True)))


def test_follow_symlinks_reads_the_target_judged_and_nothing_else(
    tmp_path: Path, export: Path
) -> None:
    target = tmp_path / "elsewhere" / "real.mp4"
    random_file(target, 1000, seed=1)
    link = export / "clip.mp4"
    link.symlink_to(target)
    judged = snapshot(link, follow_symlinks=True)
    assert judged is not None and judged.inode == target.stat().st_ino
    rule = OpenRule.for_watch([export], follow_symlinks=True)
    assert full_sha256(link, judged, rule) == sha256_file(target)
    other = tmp_path / "elsewhere" / "other.mp4"
    random_file(other, 1000, seed=2)
    link.unlink()
    link.symlink_to(other)  # pointed at another file after it was judged
    with pytest.raises(FileRefused):
        full_sha256(link, judged, rule)


def test_a_sidecar_symlinked_to_a_private_file_is_never_quoted(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    secret = _private_file(tmp_path)
    random_file(export / "clip.mp4", 2000, seed=1)
    (export / "clip.yaml").symlink_to(secret)
    # Not followed: the link is no sidecar at all.
    assert find_sidecar(export / "clip.mp4") is None
    assert examine_sidecar(export / "clip.mp4", 0, time.time()).sidecar is None
    # Followed (watch.follow_symlinks): read, found wrong, and named but never quoted.
    _old(secret)
    config = write_config(tmp_path, server.url, watch={"follow_symlinks": True})
    result = run_once(config, "30s")
    assert result.returncode == 1
    rows = _rows_by_name(tmp_path)
    assert rows["clip.mp4"]["fail_reason"] == "bad_sidecar", rows["clip.mp4"]
    assert str(rows["clip.mp4"]["fail_detail"]).startswith("sidecar clip.yaml: ")
    status = run_cli("status", "-c", str(config), "--json")
    plain = run_cli("status", "-c", str(config))
    shown = [result.stdout, result.stderr, status.stdout, plain.stdout, plain.stderr]
    shown += [json.dumps(row) for row in ledger_rows(tmp_path / "ledger.db")]
    shown += [p.read_text(errors="replace") for p in tmp_path.rglob("*.txt")]
    for text in shown:
        assert "PRIVATE-HASH" not in text


# --- 8. a crafted MP4 costs one bounded walk per version -------------------------------------


def test_a_file_of_tiny_boxes_is_walked_once_per_snapshot_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "free.mp4"
    path.write_bytes(struct.pack(">I4s", 8, b"free") * (15 * 1024 * 1024 // 8))
    monkeypatch.setattr(mp4, "MAX_BOXES", 50_000)  # the cap, scaled down to keep this fast
    walks: list[int] = []
    real_walk = finished.walk_boxes

    def counted(fd: int, size: int) -> mp4.BoxVerdict:
        walks.append(size)
        return real_walk(fd, size)

    monkeypatch.setattr(finished, "walk_boxes", counted)
    logged: list[tuple[str, dict[str, object]]] = []
    checks = FinishedChecks(
        check_open_writers=False,
        check_container=True,
        done_marker=None,
        log=lambda event, fields: logged.append((event, fields)),
    )
    judged = snapshot(path)
    assert judged is not None
    for _ in range(5):  # five settle passes over an unchanged file
        assert checks.why_not_finished(path, judged.size, judged=judged) is None
    assert walks == [judged.size]
    assert [event for event, _fields in logged] == ["file.container_unknown"]
    assert logged[0][1]["reason"] == (
        "more than 50000 top-level boxes: cannot be judged by its boxes"
    )
    with open(path, "ab") as handle:  # a new version is judged anew
        handle.write(struct.pack(">I4s", 8, b"free"))
    judged = snapshot(path)
    assert judged is not None
    checks.why_not_finished(path, judged.size, judged=judged)
    assert len(walks) == 2


def test_the_box_walk_keeps_no_list(tmp_path: Path) -> None:
    path = tmp_path / "free.mp4"
    path.write_bytes(struct.pack(">I4s", 8, b"free") * 100_000)
    verdict = mp4.check_boxes(path, path.stat().st_size)
    assert verdict.complete is False and verdict.reason == "no moov box"
    assert len(verdict.boxes) == mp4.SHOWN_BOXES


# --- 10. what the daemon remembers of files is bounded -----------------------------------------


async def test_the_settled_cache_forgets_files_moved_away(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        for index in range(20):
            random_file(export / f"{index}.mkv", 100, seed=index)
        assert await intake.scan("startup") == 20
        for job in await ledger.jobs_in([State.WAITING]):
            await set_state(ledger, job.id, State.DONE, done_at=1.0)
        assert await intake.scan("interval") == 0
        settled = intake.scanner.settled
        assert settled is not None and len(settled) == 20
        moved = tmp_path / "archive"
        moved.mkdir()
        for index in range(15):
            os.rename(export / f"{index}.mkv", moved / f"{index}.mkv")
        assert await intake.scan("interval") == 0
        assert len(settled) == 5  # what the scan did not find is dropped
        # One comes back unchanged: still the done job's file, not a new job.
        os.rename(moved / "3.mkv", export / "3.mkv")
        assert await intake.scan("interval") == 0
        assert len(await ledger.jobs_in(list(State))) == 20
    finally:
        await ledger.close()


async def test_bad_names_are_remembered_only_while_present(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        bad = [os.path.join(os.fsencode(export), b"caf\xe9-%d.mkv" % n) for n in range(5)]
        for name in bad:
            with open(name, "wb") as handle:
                handle.write(b"x" * 10)
        await intake.scan("startup")
        assert len(intake.scanner._bad_names) == 5
        for name in bad[1:]:
            os.unlink(name)
        await intake.scan("interval")
        assert len(intake.scanner._bad_names) == 1
        assert await ledger.jobs_in(list(State)) == []
    finally:
        await ledger.close()


def test_container_verdicts_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "VERDICTS_KEPT", 8)
    checks = FinishedChecks(check_open_writers=False, check_container=True, done_marker=None)
    for index in range(50):
        path = tmp_path / f"{index}.mp4"
        path.write_bytes(struct.pack(">I4s", 8, b"moof"))
        checks.why_not_finished(path, 8)
    assert len(checks._verdicts) == 8


def test_a_folder_locked_during_an_upload_is_that_files_retry_not_an_internal_error(
    nobody_dir: Path, server: FakeValtThread
) -> None:
    """The daemon runs as nobody (root reads any folder). A folder above a file in upload is
    made unreadable: the job is retried as ``source_unreadable`` (no traceback, no
    ``job.internal_error``), and once the folder is readable again the file is uploaded."""
    room = nobody_dir / "export" / "room"
    room.mkdir(parents=True)
    state = nobody_dir / "state"
    state.mkdir()
    digest = random_file(room / "clip.mp4", 1024 * 1024)
    for path in (nobody_dir / "export", room, room / "clip.mp4", state):
        os.chown(path, NOBODY, NOBODY)
    config = write_config(
        nobody_dir,
        server.url,
        watch={"paths": [str(nobody_dir / "export")], "settle": "0.1s"},
        upload={"chunk_size": "64KiB", "max_attempts": 100},
        ledger={"path": str(state / "ledger.db"), "backups": 0},
    )
    config.chmod(0o644)
    server.set_faults(slow_rate=1.0, slow_seconds=0.2)  # 16 chunks: time to lock the folder
    log = nobody_dir / "daemon.log"
    daemon = start_as_nobody(config, log)
    try:
        wait_for(lambda: [r["state"] for r in ledger_rows(state / "ledger.db")] == ["uploading"])
        room.chmod(0o000)
        wait_for(lambda: '"source_unreadable"' in log.read_text(), timeout=30)
        room.chmod(0o755)
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: [r["state"] for r in ledger_rows(state / "ledger.db")] == ["done"], 60)
    finally:
        room.chmod(0o755)
        assert stop_process(daemon) == 0
    events = [e["event"] for e in log_events(log)]
    assert "upload.retry" in events
    assert_no_event(events, "job.internal_error")
    assert [video["sha256"] for video in server_videos(server).values()] == [digest]
