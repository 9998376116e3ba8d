"""Finished-file detection end to end: real writer processes, real files, the fake Valt server.

Each test plays a capture program as a separate process that holds the file
open, writes slowly, pauses longer than ``settle``, patches MP4 boxes in
place, renames, or crashes, while the daemon runs as a real process (or
``ingestd run --once``). The assertions are about what the server received
and when: nothing before the file is finished, then exactly the final bytes,
once. A file that fails a check stays ``waiting`` (never ``failed``), and
``ingestd status`` says why.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    KiB,
    assert_no_event,
    ledger_rows,
    log_events,
    run_cli,
    run_once,
    server_videos,
    sha256_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.config.load import load_config
from ingestd.fake_valt import FakeValtThread
from ingestd.intake import settle, waiting, watcher
from ingestd.intake.finished import FinishedChecks
from ingestd.intake.mp4 import check_boxes
from ingestd.intake.mp4_build import FRAG_MOOV, FTYP, MOOV, box, large_box, moof, mp4_pieces
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger

SETTLE = 0.5
CHECKS_ON = {
    "settle": f"{SETTLE}s",
    "rescan_interval": "1s",
    "check_open_writers": True,
    "check_container": True,
}

# --- a capture program as a real process ---------------------------------------------------------

# Reads one JSON command a line and answers "ok <time.time()>" when it is done, so the test
# decides when the program writes, pauses (holding the file open), patches, renames or closes.
WRITER = r"""
import json, os, sys, time
handle = open(sys.argv[1], sys.argv[2])
print("ok", time.time(), flush=True)
for line in sys.stdin:
    op, *args = json.loads(line)
    if op == "write":
        handle.write(bytes.fromhex(args[0]))
    elif op == "slow":  # data, pieces, seconds between pieces
        data, pieces, interval = bytes.fromhex(args[0]), args[1], args[2]
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            if start:
                time.sleep(interval)
            handle.write(data[start:start + step])
            handle.flush()
    elif op == "seek":
        handle.seek(args[0], args[1])
    elif op == "rename":
        os.rename(args[0], args[1])
    elif op == "close":
        handle.close()
    if not handle.closed:
        handle.flush()
    print("ok", time.time(), flush=True)
"""


class Writer:
    """A child process holding one file open, driven command by command."""

    def __init__(self, path: Path, mode: str = "wb") -> None:
        self.path = path
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid
        self._ack()

    def _ack(self) -> float:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ok "), f"writer said {line!r}"
        return float(line.split()[1])

    def _do(self, *command: Any) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._ack()

    def write(self, data: bytes) -> float:
        return self._do("write", data.hex())

    def slow(self, data: bytes, pieces: int, interval: float = 0.1) -> float:
        """Write ``data`` in ``pieces`` with ``interval`` seconds between them (under settle)."""
        return self._do("slow", data.hex(), pieces, interval)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> float:
        return self._do("seek", offset, whence)

    def rename(self, source: Path, target: Path) -> float:
        return self._do("rename", str(source), str(target))

    def close(self) -> float:
        """Close the file and let the process exit; returns when the file was closed."""
        closed_at = self._do("close")
        self.finish()
        return closed_at

    def finish(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextmanager
def writing(path: Path, mode: str = "wb") -> Iterator[Writer]:
    writer = Writer(path, mode)
    try:
        yield writer
    finally:
        writer.finish()


# --- the daemon and what it says ------------------------------------------------------------------


@contextmanager
def daemon_running(tmp_path: Path, url: str, **watch: Any) -> Iterator[tuple[Path, Path]]:
    """``ingestd run`` as a real process with the finished checks on; yields (config, log).
    At debug: the tests read when each upload began from its record.created."""
    config = write_config(tmp_path, url, watch={**CHECKS_ON, **watch}, log={"level": "debug"})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: "watcher.rescan" in log.read_text(), timeout=20)  # start-up scan done
        yield config, log
    finally:
        assert stop_process(daemon) == 0, log.read_text()[-3000:]


def row_for(tmp_path: Path, path: Path) -> dict[str, Any] | None:
    rows = [row for row in ledger_rows(tmp_path / "ledger.db") if row["path"] == str(path)]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def waiting_because(
    tmp_path: Path, path: Path, prefix: str, since: float = 0.0, timeout: float = 15
) -> dict[str, Any]:
    """Wait until the ledger says ``path`` waits for a reason starting with ``prefix``,
    recorded after ``since`` (time.time()); fails if the job ever leaves ``waiting``."""

    def check() -> dict[str, Any] | None:
        row = row_for(tmp_path, path)
        if row is None:
            return None
        assert row["state"] == "waiting", row
        reason = row["wait_reason"] or ""
        return row if reason.startswith(prefix) and row["updated_at"] > since else None

    found: dict[str, Any] = wait_for(check, timeout=timeout)
    return found


def done(tmp_path: Path, path: Path) -> bool:
    row = row_for(tmp_path, path)
    assert row is None or row["state"] != "failed", row
    return row is not None and row["state"] == "done"


def status_json(config: Path) -> dict[str, Any]:
    result = run_cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def status_waiting(config: Path, path: Path) -> dict[str, Any]:
    """The entry ``ingestd status --json`` shows for waiting ``path``."""
    status = status_json(config)
    [item] = [item for item in status["waiting"] if item["path"] == str(path)]
    assert item["state"] == "waiting"
    assert status["failed"] == []
    return item


def event_time(log: Path, event_name: str, **match: Any) -> float:
    times = [
        datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
        for event in log_events(log)
        if event.get("event") == event_name and all(event.get(k) == v for k, v in match.items())
    ]
    assert len(times) == 1, f"{len(times)} {event_name} events matching {match}"
    return times[0]


def no_records(server: FakeValtThread) -> bool:
    return server.snapshot()["records"] == []


def hold_for(seconds: float, server: FakeValtThread, tmp_path: Path, path: Path) -> None:
    """Keep checking for ``seconds`` that no record for ``path`` exists and its job still waits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        names = [record["name"] for record in server.snapshot()["records"]]
        assert path.stem not in names, names
        row = row_for(tmp_path, path)
        assert row is not None and row["state"] == "waiting", row
        time.sleep(0.1)


def uploaded_once(server: FakeValtThread, name: str, path: Path) -> dict[str, Any]:
    """The record ``name``: the only one of that name, holding exactly the file's bytes."""
    records = [r for r in server.snapshot()["records"] if r["name"] == name]
    assert len(records) == 1, records
    video = server_videos(server)[name]
    assert video["sha256"] == sha256_file(path)
    assert video["received"] == path.stat().st_size
    return video


# --- 1. an open writer pausing longer than settle -------------------------------------------------


def test_open_writer_pausing_longer_than_settle_is_not_uploaded(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    path = export / "hold.mp4"
    payload = os.urandom(160 * KiB)
    with daemon_running(tmp_path, server.url) as (config, log), writing(path) as writer:
        # So far a complete MP4: the box check passes, only the open-writer check can hold it.
        writer.write(FTYP + MOOV + box(b"mdat", size=8 + len(payload)))
        paused_at = writer.slow(payload, pieces=8)
        assert check_boxes(path, path.stat().st_size).complete is True
        row = waiting_because(tmp_path, path, f"open for writing by pid {writer.pid} (")
        item = status_waiting(config, path)
        assert item["why"] == row["wait_reason"]
        assert item["job"] == row["id"]
        # The pause lasts 2 s, four times settle; nothing may move meanwhile.
        hold_for(paused_at + 2.0 - time.time(), server, tmp_path, path)
        writer.slow(box(b"free", os.urandom(64 * KiB)), pieces=4)
        closed_at = writer.close()
        wait_for(lambda: done(tmp_path, path), timeout=20)
    uploaded_once(server, "hold", path)
    assert event_time(log, "record.created", name="hold") >= closed_at
    assert len(ledger_rows(tmp_path / "ledger.db")) == 1


# --- 2. an MP4 written like a muxer: mdat size patched, moov appended last ----------------------


def test_muxer_style_mp4_waits_for_its_moov(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    path = export / "muxed.mp4"
    payload = os.urandom(192 * KiB)
    mdat_at = len(FTYP)
    with (
        daemon_running(tmp_path, server.url, check_open_writers=False) as (config, log),
        writing(path) as writer,
    ):
        # The mdat header with a placeholder size (0 = "to the end of the file"), like ffmpeg.
        writer.write(FTYP + box(b"mdat", size=0))
        paused_at = writer.slow(payload, pieces=6)
        # Mid-write pause, longer than settle, the file open (but that check is off).
        waiting_because(tmp_path, path, "no moov box")
        assert status_waiting(config, path)["why"] == "no moov box"
        hold_for(paused_at + 1.5 - time.time(), server, tmp_path, path)
        # The muxer seeks back and patches the mdat size: ftyp + mdat add up, still no moov.
        writer.seek(mdat_at)
        writer.write(struct.pack(">I", 8 + len(payload)))
        patched_at = writer.seek(0, os.SEEK_END)
        assert check_boxes(path, path.stat().st_size).reason == "no moov box"
        waiting_because(tmp_path, path, "no moov box", since=patched_at)
        hold_for(3 * SETTLE, server, tmp_path, path)
        moov_at = time.time()
        writer.write(MOOV)
        writer.close()
        wait_for(lambda: done(tmp_path, path), timeout=20)
    uploaded_once(server, "muxed", path)
    assert path.stat().st_size == len(FTYP) + 8 + len(payload) + len(MOOV)
    assert event_time(log, "record.created", name="muxed") >= moov_at


# --- 3. a fragmented MP4 mid-write --------------------------------------------------------------


def test_fragmented_mp4_is_held_by_its_writer(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    path = export / "fragmented.mp4"
    with daemon_running(tmp_path, server.url) as (config, log), writing(path) as writer:
        writer.write(FTYP + FRAG_MOOV)
        for sequence in (1, 2, 3):
            writer.slow(moof(sequence) + box(b"mdat", os.urandom(48 * KiB)), pieces=3)
        paused_at = time.time()
        # Between fragments the boxes add up: the box check cannot tell; the writer holds it.
        verdict = check_boxes(path, path.stat().st_size)
        assert verdict.complete is None, verdict
        waiting_because(tmp_path, path, f"open for writing by pid {writer.pid} (")
        assert status_waiting(config, path)["why"].startswith(
            f"open for writing by pid {writer.pid}"
        )
        hold_for(paused_at + 2.0 - time.time(), server, tmp_path, path)
        writer.slow(moof(4) + box(b"mdat", os.urandom(48 * KiB)), pieces=3)
        closed_at = writer.close()
        wait_for(lambda: done(tmp_path, path), timeout=20)
        # Rescans come and go; the notice stays one.
        time.sleep(1.5)
    uploaded_once(server, "fragmented", path)
    assert event_time(log, "record.created", name="fragmented") >= closed_at
    notices = [e for e in log_events(log) if e["event"] == "file.container_unknown"]
    assert [e["path"] for e in notices] == [str(path)]
    assert "cannot be judged" in notices[0]["reason"]


# --- 4. 64-bit and size-0 boxes; and files that never pass stay waiting ---------------------------


def test_largesize_and_size_zero_boxes_upload_and_unfinished_files_stay_waiting(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    large = export / "largesize.mp4"
    large.write_bytes(FTYP + large_box(b"mdat", os.urandom(300 * KiB)) + MOOV)
    to_end = export / "size zero.mp4"
    to_end.write_bytes(FTYP + MOOV + box(b"mdat", os.urandom(300 * KiB), size=0))
    no_moov = export / "no moov.mp4"
    no_moov.write_bytes(FTYP + box(b"mdat", os.urandom(100 * KiB)))
    empty = export / "empty.mkv"  # no boxes to judge: only the 0-byte rule holds it
    empty.touch()
    config = write_config(tmp_path, server.url, watch=CHECKS_ON)
    result = run_once(config, "2s")
    assert result.returncode == 1, result.stderr
    assert f"not done: {no_moov} (waiting: no moov box)" in result.stderr
    assert f"not done: {empty} (waiting: empty file (0 bytes))" in result.stderr
    uploaded_once(server, "largesize", large)
    uploaded_once(server, "size zero", to_end)
    assert len(server.snapshot()["records"]) == 2
    states = {row["path"]: row["state"] for row in ledger_rows(tmp_path / "ledger.db")}
    assert states == {
        str(large): "done",
        str(to_end): "done",
        str(no_moov): "waiting",
        str(empty): "waiting",
    }
    why = {item["path"]: item["why"] for item in status_json(config)["waiting"]}
    assert why == {str(no_moov): "no moov box", str(empty): "empty file (0 bytes)"}


# --- 5. the done marker --------------------------------------------------------------------------


def test_done_marker(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    path = export / "clip.mp4"
    with daemon_running(tmp_path, server.url, done_marker=".done") as (config, log):
        with writing(path) as writer:
            for piece in mp4_pieces(200 * KiB, piece=64 * KiB):
                writer.write(piece)
            writer.close()
        waiting_because(tmp_path, path, "waiting for marker clip.mp4.done")
        assert status_waiting(config, path)["why"] == "waiting for marker clip.mp4.done"
        hold_for(4 * SETTLE, server, tmp_path, path)
        marked_at = time.time()
        (export / "clip.mp4.done").touch()
        wait_for(lambda: done(tmp_path, path), timeout=20)
    uploaded_once(server, "clip", path)
    assert event_time(log, "record.created", name="clip") >= marked_at
    assert [row["path"] for row in ledger_rows(tmp_path / "ledger.db")] == [str(path)]


# --- 6. temporary names ---------------------------------------------------------------------------


def test_temporary_names_renamed_when_finished_are_one_record(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    part_a, final_a = export / "clip.mp4.part", export / "clip.mp4"
    # A hidden temporary name matches include "*.mp4": only exclude ".*" keeps it out.
    part_b, final_b = export / ".take.mp4", export / "take.mp4"
    with daemon_running(tmp_path, server.url) as (_config, log):
        with writing(part_a) as a, writing(part_b) as b:
            head_a, *body_a, tail_a = mp4_pieces(256 * KiB, piece=64 * KiB)
            head_b, *body_b, tail_b = mp4_pieces(256 * KiB, piece=64 * KiB)
            a.write(head_a)
            b.write(head_b)
            a.slow(b"".join(body_a), pieces=4)
            # Both pause with their temporary files open, longer than settle.
            time.sleep(4 * SETTLE)
            assert no_records(server)
            # a: closes, then renames; b: renames while open, then writes its moov.
            a.write(tail_a)
            a.close()
            a_renamed_at = time.time()
            os.rename(part_a, final_a)
            b.slow(b"".join(body_b), pieces=4)
            b.rename(part_b, final_b)
            waiting_because(tmp_path, final_b, f"open for writing by pid {b.pid} (")
            hold_for(2 * SETTLE, server, tmp_path, final_b)
            b.write(tail_b)
            b_closed_at = b.close()
        wait_for(lambda: done(tmp_path, final_a) and done(tmp_path, final_b), timeout=20)
    uploaded_once(server, "clip", final_a)
    uploaded_once(server, "take", final_b)
    assert sorted(r["name"] for r in server.snapshot()["records"]) == ["clip", "take"]
    assert event_time(log, "record.created", name="clip") >= a_renamed_at
    assert event_time(log, "record.created", name="take") >= b_closed_at
    paths = [row["path"] for row in ledger_rows(tmp_path / "ledger.db")]
    assert sorted(paths) == sorted([str(final_a), str(final_b)])
    logged_paths = {
        e["path"] for e in log_events(log) if str(e.get("path")).startswith(f"{export}")
    }
    assert logged_paths == {str(final_a), str(final_b)}


# --- 7. retry --force ---------------------------------------------------------------------------


def test_retry_force_uploads_a_crashed_capture_and_a_skipped_duplicate(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    crashed = export / "crashed.mp4"
    original, copy = export / "original.mp4", export / "copy.mp4"
    with daemon_running(tmp_path, server.url) as (config, log):
        writer = Writer(crashed)
        try:
            writer.write(FTYP + box(b"mdat", size=0))
            writer.slow(os.urandom(128 * KiB), pieces=4)
        finally:
            writer.process.send_signal(signal.SIGKILL)  # the capture program crashes
            writer.finish()
        row = waiting_because(tmp_path, crashed, "no moov box")
        status = run_cli("status", "-c", str(config))
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert "waiting:" in lines
        [line] = [line for line in lines if line.startswith("  #") and str(crashed) in line]
        assert line.startswith(f"  #{row['id']} waiting")
        assert "- no moov box" in line
        hold_for(4 * SETTLE, server, tmp_path, crashed)

        result = run_cli("retry", "-c", str(config), "--force", str(row["id"]))
        retried_at = time.time()
        assert result.returncode == 0, result.stderr
        assert f"re-queued 1 job(s): {row['id']}" in result.stdout
        wait_for(lambda: done(tmp_path, crashed), timeout=15)
        assert event_time(log, "record.created", name="crashed") - retried_at < 5.0
        uploaded_once(server, "crashed", crashed)

        # The same content under another name is skipped; --force uploads it anyway.
        content = mp4_pieces(256 * KiB, piece=64 * KiB)
        original.write_bytes(b"".join(content))
        wait_for(lambda: done(tmp_path, original), timeout=15)
        # A copying program writes the copy slowly: the daemon first sees it half-written.
        with writing(copy) as copier:
            copier.write(content[0])
            wait_for(lambda: row_for(tmp_path, copy), timeout=15)
            copier.slow(b"".join(content[1:]), pieces=3)
            copier.close()

        def skipped() -> dict[str, Any] | None:
            found = row_for(tmp_path, copy)
            return found if found and found["state"] == "skipped" else None

        copy_row = wait_for(skipped, timeout=15)
        assert copy_row["wait_reason"] == f"same content as {original}"
        # Rescans (every 1 s) see the skipped copy unchanged: no second job for it.
        time.sleep(2.5)
        assert len([r for r in ledger_rows(tmp_path / "ledger.db") if r["path"] == str(copy)]) == 1
        assert sorted(r["name"] for r in server.snapshot()["records"]) == ["crashed", "original"]
        result = run_cli("retry", "-c", str(config), "--force", str(copy_row["id"]))
        assert result.returncode == 0, result.stderr
        wait_for(lambda: done(tmp_path, copy), timeout=15)
    uploaded_once(server, "copy", copy)
    uploaded_once(server, "original", original)
    assert len(server.snapshot()["records"]) == 3
    assert crashed.stat().st_size == len(FTYP) + 8 + 128 * KiB
    assert_no_event(log, "job.failed")


# --- 8. file.still_changing: a low rate, not a loop ----------------------------------------------

GROWER = """
import sys, time
deadline = time.monotonic() + float(sys.argv[2])
with open(sys.argv[1], "ab") as handle:
    while time.monotonic() < deadline:
        handle.write(b"x" * 1024)
        handle.flush()
        if sys.stdout:
            print("growing", flush=True)
            sys.stdout.close()
            sys.stdout = None
        time.sleep(0.05)
"""


class Recorder:
    """Stands in for a structlog logger: remembers (monotonic time, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append((time.monotonic(), event, fields))

    warning = exception = info

    def named(self, event: str) -> list[tuple[float, str, dict[str, Any]]]:
        return [entry for entry in self.events if entry[1] == event]


async def test_still_changing_is_logged_at_a_low_rate(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    after, every, run_for = 0.5, 1.0, 3.6
    recorder = Recorder()
    monkeypatch.setattr(settle, "log", recorder)
    monkeypatch.setattr(waiting, "log", recorder)  # file.waiting
    monkeypatch.setattr(settle, "STILL_CHANGING_AFTER", after)
    monkeypatch.setattr(settle, "STILL_CHANGING_EVERY", every)
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9", watch={"settle": "0.3s"}))
    ledger = await SqliteLedger.open(config.ledger.path)
    ready: list[int] = []
    intake = watcher.Intake(
        watch=config.watch,
        sidecars=config.record.sidecar,
        ledger=ledger,
        checks=FinishedChecks(check_open_writers=True, check_container=False, done_marker=None),
        is_active=lambda _job: False,
        on_ready=lambda: ready.append(1),
    )
    changes = 0
    original = intake.settler._log_still_changing

    def counting(*args: Any) -> None:
        nonlocal changes
        changes += 1
        original(*args)

    monkeypatch.setattr(intake.settler, "_log_still_changing", counting)
    path = export / "growing.mkv"
    grower = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GROWER, str(path), str(run_for + 2), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert grower.stdout is not None
        assert await grower.stdout.readline() == b"growing\n"
        assert await intake.scan("startup") == 1
        stop = asyncio.Event()
        settling = asyncio.create_task(intake.run_settle(stop))
        await asyncio.sleep(run_for)
        stop.set()
        await settling
        [job] = await ledger.jobs_in(list(State))
    finally:
        grower.kill()
        await grower.wait()
        await ledger.close()
    logged = recorder.named("file.still_changing")
    # The settle loop saw the file change on nearly every tick...
    assert changes >= 10, changes
    # ...but said so only after `after` seconds, then once every `every` seconds.
    most = int((run_for - after) / every) + 1
    assert 2 <= len(logged) <= most, [entry[2] for entry in logged]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(logged)]
    assert all(gap >= every for gap in gaps), gaps
    assert all(entry[2]["job_id"] == job.id for entry in logged)
    assert [entry[2]["size"] for entry in logged] == sorted({entry[2]["size"] for entry in logged})
    assert_no_event(
        recorder.events, "file.waiting"
    )  # "still being written" is not logged each time
    assert job.state == State.WAITING
    assert job.wait_reason == "still being written"
    assert ready == []


# --- 9. a real recording with ffmpeg --------------------------------------------------------------


def _ffmpeg() -> tuple[str, str]:
    """The ffmpeg binary from the imageio-ffmpeg wheel, and the best video encoder it has."""
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]
    except ImportError:
        pytest.skip("imageio-ffmpeg is not installed (pip install -e '.[dev]')")
    exe = str(imageio_ffmpeg.get_ffmpeg_exe())
    encoders = subprocess.run(
        [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
    ).stdout
    return exe, "libx264" if " libx264 " in encoders else "mpeg4"


def test_ffmpeg_recording_in_real_time(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    exe, codec = _ffmpeg()
    path = export / "recording.mp4"
    with daemon_running(tmp_path, server.url) as (_config, log):
        # ffmpeg's MP4 muxer: ftyp, a placeholder mdat, frames as they come, then it patches the
        # mdat size and appends moov when it stops.
        started = time.monotonic()
        # fmt: off
        ffmpeg = subprocess.Popen(
            [
                exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4",
                "-c:v", codec, "-pix_fmt", "yuv420p",
                "-flush_packets", "1",  # each frame reaches the file as it is encoded
                str(path),
            ],
            stderr=subprocess.PIPE,
        )
        # fmt: on
        try:
            # Frames are arriving (the header alone is 48 bytes).
            wait_for(lambda: path.exists() and path.stat().st_size > 2 * KiB, timeout=10)
            # The recorder stalls (a busy capture machine) longer than settle, file open.
            ffmpeg.send_signal(signal.SIGSTOP)
            try:
                waiting_because(tmp_path, path, f"open for writing by pid {ffmpeg.pid} (")
                assert check_boxes(path, path.stat().st_size).reason == "no moov box"
                assert no_records(server)
            finally:
                ffmpeg.send_signal(signal.SIGCONT)
            while ffmpeg.poll() is None:
                assert no_records(server), "uploaded while ffmpeg was still recording"
                row = row_for(tmp_path, path)
                assert row is not None and row["state"] == "waiting", row
                time.sleep(0.1)
            exited_at = time.time()
        finally:
            if ffmpeg.poll() is None:
                ffmpeg.kill()
            _, errors = ffmpeg.communicate(timeout=10)
        assert ffmpeg.returncode == 0, errors
        assert time.monotonic() - started >= 3.5  # it really recorded in real time
        wait_for(lambda: done(tmp_path, path), timeout=30)
    verdict = check_boxes(path, path.stat().st_size)
    assert verdict.complete is True, verdict
    assert verdict.boxes[-1] == "moov"  # moov written last: the box check had a say
    uploaded_once(server, "recording", path)
    assert len(server.snapshot()["records"]) == 1
    assert event_time(log, "record.created", name="recording") >= exited_at
