"""Moves and deletions act only on the very file that was uploaded (design.md, "Trust rules").

``keep_for``, ``action: delete``, ``action: move`` and ``failed_to`` check the
file's identity (inode, size, mtime) against what the ledger recorded, and
never act while another live job owns the path. Otherwise the file is left
alone, ``file.left_alone`` is logged and the job is marked so it is not tried
again; left alone as owned, only until no live job owns the path.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_no_event,
    ledger_rows,
    log_events,
    random_file,
    run_once,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from ledger_support import add_job_in, set_state
from structlog.testing import capture_logs

from ingestd.config.load import load_config
from ingestd.config.schema import Config
from ingestd.fake_valt import FakeValtThread
from ingestd.intake.finished import snapshot
from ingestd.ledger.model import State
from ingestd.ledger.schema import MIGRATIONS, SCHEMA
from ingestd.ledger.store import SqliteLedger
from ingestd.upload.after_upload import (
    Belongings,
    apply_after_upload,
    apply_once,
    housekeeping,
    move_failed,
)


def _left_alone(output: str) -> list[dict[str, Any]]:
    return [e for e in _json_lines(output) if e.get("event") == "file.left_alone"]


def _json_lines(text: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _write_open(path: Path, size: int, seed: int) -> tuple[Any, bytes]:
    """A new version of ``path``, still open for writing (so it cannot be judged finished)."""
    data = random.Random(seed).randbytes(size)
    path.unlink()
    handle = open(path, "wb")  # noqa: SIM115 - held open on purpose; the caller closes it
    handle.write(data)
    handle.flush()
    return handle, data


def _events(log_file: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in log_events(log_file) if e.get("event") == name]


def test_keep_for_never_deletes_a_newer_recording_under_the_same_name(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """v1 is done; v2 is written under the same name, still open; a restart after v1's
    keep_for ran out must leave v2 and its job alone."""
    room = export / "room.mp4"
    random_file(room, 1000, seed=1)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, after_upload={"keep_for": "1s"}
    )
    assert run_once(config, "10s").returncode == 0
    [v1] = ledger_rows(tmp_path / "ledger.db")
    writer, v2 = _write_open(room, 2000, seed=2)
    wait_for(lambda: time.time() > v1["done_at"] + 1.5, timeout=10)
    log_file = tmp_path / "daemon.log"
    daemon = start_daemon(config, log_file)  # the restart: housekeeping runs at start-up
    try:
        with writer:
            [event] = wait_for(lambda: _events(log_file, "file.left_alone"))
            assert (event["job_id"], event["action"]) == (v1["id"], "keep_for")
            assert event["reason"] in ("owned", "replaced")
            assert room.read_bytes() == v2
            rows = ledger_rows(tmp_path / "ledger.db")
            assert [(r["id"], r["state"]) for r in rows] == [(1, "done"), (2, "waiting")]
            assert rows[0]["cleaned_at"] is None and rows[0]["left_alone"] == event["reason"]
        # Finished now: v2 is uploaded as a job of its own, and kept.
        wait_for(lambda: [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done"] * 2)
    finally:
        assert stop_process(daemon) == 0
    assert room.read_bytes() == v2
    received = sorted(r["videos"][0]["received"] for r in server.snapshot()["records"])
    assert received == [1000, 2000]
    assert_no_event(log_file, "file.expired")


@pytest.mark.parametrize("action", ["delete", "move"])
def test_the_after_upload_action_skips_a_file_replaced_after_done(
    tmp_path: Path, server: FakeValtThread, export: Path, action: str
) -> None:
    """A crash between ``done`` and the action, then the file is replaced: the action,
    finished by housekeeping at the next start, must not touch the new file."""
    archive = tmp_path / "archive"
    room = export / "room" / "clip.mp4"
    random_file(room, 1000, seed=1)
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        after_upload={"action": action, "move_to": str(archive) if action == "move" else None},
    )
    crashed = run_once(config, "10s", INGESTD_FAILPOINTS="before_after_action")
    assert crashed.returncode == -signal.SIGKILL
    writer, v2 = _write_open(room, 2000, seed=2)
    log_file = tmp_path / "daemon.log"
    daemon = start_daemon(config, log_file)
    try:
        with writer:
            [event] = wait_for(lambda: _events(log_file, "file.left_alone"))
            assert (event["job_id"], event["action"]) == (1, action)
            assert room.read_bytes() == v2
            assert not archive.exists() or list(archive.rglob("*.mp4")) == []
            rows = ledger_rows(tmp_path / "ledger.db")
            assert [(r["state"], r["after_done"]) for r in rows] == [("done", 1), ("waiting", 0)]
            assert rows[0]["final_path"] is None
        # Finished now: v2's own action, on v2.
        wait_for(lambda: [r["after_done"] for r in ledger_rows(tmp_path / "ledger.db")] == [1, 1])
    finally:
        assert stop_process(daemon) == 0
    assert not room.exists()
    if action == "move":
        assert (archive / "room" / "clip.mp4").read_bytes() == v2


async def _ledger_with(
    tmp_path: Path, video: Path, state: State, **changes: Any
) -> tuple[SqliteLedger, int]:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    snap = snapshot(video)
    assert snap is not None
    job = await add_job_in(
        ledger,
        state,
        path=str(video),
        root=str(video.parent),
        snapshot=(snap.size, snap.mtime_ns, snap.inode, snap.device),
    )
    await ledger.update(job.id, done_at=time.time() - 3600, **changes)
    return ledger, job.id


def _belongs(config: Config) -> Belongings:
    return Belongings(config.watch.done_marker, config.record.sidecar)


def _replace(video: Path) -> bytes:
    """Another file under the same name: new inode (the old one is kept alive), other size."""
    os.link(video, video.with_name("old-inode"))
    video.unlink()
    data = random.Random(9).randbytes(777)
    video.write_bytes(data)
    return data


async def test_failed_to_leaves_a_replaced_file_where_it_is(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    failed = tmp_path / "failed"
    video = export / "bad.mp4"
    random_file(video, 1000)
    config = load_config(
        write_config(tmp_path, server.url, after_upload={"failed_to": str(failed)})
    )
    ledger, job_id = await _ledger_with(tmp_path, video, State.FAILED)
    try:
        replacement = _replace(video)
        with capture_logs() as logs:
            await move_failed(
                config.after_upload,
                _belongs(config),
                ledger,
                await ledger.get_job(job_id),
                "upload_refused",
                "no",
            )
        assert video.read_bytes() == replacement
        assert not failed.exists()
        [event] = [e for e in logs if e["event"] == "file.left_alone"]
        assert (event["action"], event["reason"]) == ("failed_to", "replaced")
        job = await ledger.get_job(job_id)
        assert (job.final_path, job.left_alone) == (None, "replaced")
    finally:
        await ledger.close()


@pytest.mark.parametrize("how", ["keep_for", "delete"])
async def test_no_deletion_while_another_live_job_owns_the_path(
    tmp_path: Path, server: FakeValtThread, export: Path, how: str
) -> None:
    """Even the very file (same identity) is not deleted while another live job has it."""
    video = export / "clip.mp4"
    random_file(video, 1000)
    after = {"keep_for": "1s"} if how == "keep_for" else {"action": "delete"}
    config = load_config(write_config(tmp_path, server.url, after_upload=after))
    ledger, done_id = await _ledger_with(
        tmp_path, video, State.DONE, after_done=int(how == "keep_for"), final_path=str(video)
    )
    try:
        snap = snapshot(video)
        assert snap is not None
        other = await ledger.add_job(
            path=str(video),
            root=str(export),
            snapshot=(snap.size, snap.mtime_ns, snap.inode, snap.device),
        )
        with capture_logs() as logs:
            if how == "keep_for":
                await housekeeping(config.after_upload, _belongs(config), ledger)
            else:
                await apply_after_upload(
                    config.after_upload, _belongs(config), ledger, await ledger.get_job(done_id)
                )
        assert video.exists()
        [event] = [e for e in logs if e["event"] == "file.left_alone"]
        assert (event["job_id"], event["reason"], event["owner_job"]) == (
            done_id,
            "owned",
            other.id,
        )
        assert (await ledger.get_job(done_id)).left_alone == "owned"
        with capture_logs() as logs:
            await housekeeping(
                config.after_upload, _belongs(config), ledger
            )  # marked: not tried again
        assert_no_event(logs, "file.left_alone")
    finally:
        await ledger.close()


@pytest.mark.parametrize("how", ["keep_for", "delete", "move"])
async def test_a_file_left_alone_as_owned_is_tried_again_once_the_owner_is_gone(
    tmp_path: Path, server: FakeValtThread, export: Path, how: str
) -> None:
    """``owned`` holds only while the other job is live: once it is done with (here skipped,
    as a copy), housekeeping tries the step again, on the very file it uploaded."""
    video = export / "clip.mp4"
    random_file(video, 1000)
    archive = tmp_path / "archive"
    after: dict[str, Any] = {
        "keep_for": {"keep_for": "1s"},
        "delete": {"action": "delete"},
        "move": {"action": "move", "move_to": str(archive)},
    }[how]
    config = load_config(write_config(tmp_path, server.url, after_upload=after))
    ledger, done_id = await _ledger_with(
        tmp_path, video, State.DONE, after_done=int(how == "keep_for"), final_path=str(video)
    )
    try:
        snap = snapshot(video)
        assert snap is not None
        other = await ledger.add_job(
            path=str(video),
            root=str(export),
            snapshot=(snap.size, snap.mtime_ns, snap.inode, snap.device),
        )
        if how == "keep_for":
            await housekeeping(config.after_upload, _belongs(config), ledger)
        else:
            await apply_after_upload(
                config.after_upload, _belongs(config), ledger, await ledger.get_job(done_id)
            )
        assert (await ledger.get_job(done_id)).left_alone == "owned"
        await housekeeping(config.after_upload, _belongs(config), ledger)  # still owned
        assert video.exists() and (await ledger.get_job(done_id)).left_alone == "owned"
        await set_state(ledger, other.id, State.SKIPPED)
        with capture_logs() as logs:
            await housekeeping(config.after_upload, _belongs(config), ledger)
        assert not video.exists()
        job = await ledger.get_job(done_id)
        assert (job.after_done, job.left_alone) == (1, None)
        if how == "move":
            assert job.final_path == str(archive / "clip.mp4")
            assert (archive / "clip.mp4").exists()
        else:
            assert job.cleaned_at is not None
        assert [e["job_id"] for e in logs if e["event"] == "file.no_longer_owned"] == [done_id]
        assert_no_event(logs, "file.left_alone")
    finally:
        await ledger.close()


async def test_a_new_device_number_alone_is_the_same_file(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """After a remount the device number may change: that is not another file."""
    video = export / "clip.mp4"
    random_file(video, 1000)
    config = load_config(write_config(tmp_path, server.url, after_upload={"keep_for": "1s"}))
    ledger, job_id = await _ledger_with(
        tmp_path, video, State.DONE, after_done=1, final_path=str(video)
    )
    try:
        job = await ledger.get_job(job_id)
        await ledger.update(job_id, device=job.device + 1)
        await housekeeping(config.after_upload, _belongs(config), ledger)
        assert not video.exists()
        assert (await ledger.get_job(job_id)).cleaned_at is not None
    finally:
        await ledger.close()


def _version_2_ledger(path: Path, rows: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        conn.executescript(MIGRATIONS[2])
        conn.execute("INSERT INTO meta(key, value) VALUES('schema_version', '2')")
        for row in rows:
            marks = ",".join("?" * len(row))
            conn.execute(f"INSERT INTO jobs({','.join(row)}) VALUES({marks})", tuple(row.values()))
    finally:
        conn.close()


def test_upgrade_from_version_2_expires_only_the_copy_it_can_vouch_for(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A version-2 ledger recorded no identity for moved copies: the source's snapshot stands
    in for it, so a copy moved by rename (same inode) expires, and another file does not."""
    archive = tmp_path / "archive"
    archive.mkdir()
    renamed = archive / "renamed.mp4"
    random_file(renamed, 1000, seed=1)
    other = archive / "other.mp4"
    random_file(other, 1000, seed=2)
    info = renamed.stat()
    now = time.time()
    base = {
        "root": str(export),
        "state": "done",
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "inode": info.st_ino,
        "device": info.st_dev,
        "discovered_at": now - 7200,
        "done_at": now - 3600,
        "updated_at": now - 3600,
        "after_done": 1,
    }
    _version_2_ledger(
        tmp_path / "ledger.db",
        [
            {**base, "path": str(export / "renamed.mp4"), "final_path": str(renamed)},
            {**base, "path": str(export / "other.mp4"), "final_path": str(other)},
        ],
    )
    config = write_config(
        tmp_path,
        server.url,
        after_upload={"action": "move", "move_to": str(archive), "keep_for": "1s"},
    )
    result = run_once(config, "10s")
    assert result.returncode == 0
    assert not renamed.exists() and other.exists()
    [event] = _left_alone(result.stdout)
    assert (event["job_id"], event["reason"]) == (2, "replaced")
    conn = sqlite3.connect(tmp_path / "ledger.db")
    try:
        [(version,)] = conn.execute("SELECT value FROM meta WHERE key='schema_version'")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    finally:
        conn.close()
    assert int(version) >= 3
    assert {"final_inode", "final_size", "final_mtime_ns", "left_alone"} <= columns
    assert "file.expired" in {e["event"] for e in _json_lines(result.stdout)}


async def test_the_confirmer_and_housekeeping_on_one_job_move_it_once(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A job confirmed just as housekeeping looks (a restart: both at once) is moved once:
    the second finds it done with, instead of recording the moved file as missing."""
    video = export / "clip.mp4"
    random_file(video, 1000)
    archive = tmp_path / "archive"
    config = load_config(
        write_config(tmp_path, server.url, after_upload={"action": "move", "move_to": str(archive)})
    )
    ledger, job_id = await _ledger_with(tmp_path, video, State.DONE, after_done=0)
    try:
        lock = asyncio.Lock()
        job = await ledger.get_job(job_id)
        with capture_logs() as logs:
            await asyncio.gather(
                apply_once(config.after_upload, _belongs(config), ledger, job, lock),
                housekeeping(config.after_upload, _belongs(config), ledger, lock),
            )
        done = await ledger.get_job(job_id)
        assert (done.after_done, done.left_alone) == (1, None)
        assert done.final_path == str(archive / "clip.mp4") and (archive / "clip.mp4").exists()
        assert [e["event"] for e in logs].count("file.moved") == 1
        assert_no_event(logs, "file.left_alone")
    finally:
        await ledger.close()


async def test_housekeeping_sets_aside_a_failed_file_a_crash_left_in_place(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A crash between a job's failure and its move to ``failed_to``: the next
    housekeeping sets the file aside with its note. A ``not_ready`` failure stays put (its
    source is left in place), as does a ``source_missing`` one (taken up when back)."""
    aside = tmp_path / "failed"
    config = load_config(write_config(tmp_path, server.url, after_upload={"failed_to": str(aside)}))
    ids = {}
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        for name, reason in (("bad.mp4", "bad_sidecar"), ("slow.mp4", "not_ready")):
            video = export / name
            random_file(video, 1000)
            snap = snapshot(video)
            assert snap is not None
            job = await add_job_in(
                ledger,
                State.FAILED,
                path=str(video),
                root=str(export),
                snapshot=(snap.size, snap.mtime_ns, snap.inode, snap.device),
                fail_reason=reason,
                fail_detail="it happened",
            )
            ids[name] = job.id
        with capture_logs() as logs:
            await housekeeping(config.after_upload, _belongs(config), ledger)
            await housekeeping(config.after_upload, _belongs(config), ledger)  # once only
        assert (aside / "bad.mp4").exists() and (aside / "bad.mp4.error.txt").exists()
        assert "bad_sidecar" in (aside / "bad.mp4.error.txt").read_text()
        assert (export / "slow.mp4").exists() and not (aside / "slow.mp4").exists()
        assert (await ledger.get_job(ids["bad.mp4"])).final_path == str(aside / "bad.mp4")
        assert [e["event"] for e in logs].count("file.set_aside") == 1
    finally:
        await ledger.close()
