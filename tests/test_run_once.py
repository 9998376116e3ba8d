"""``ingestd run --once`` end to end: a real process, real files, the fake server over loopback."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    KiB,
    MiB,
    ledger_rows,
    random_file,
    run_once,
    server_videos,
    sha256_file,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


def _events(output: str) -> list[dict[str, Any]]:
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _named(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [event for event in events if event.get("event") == name]


def _when(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def _files(export: Path, sizes: list[int]) -> dict[str, str]:
    """Random files ``clip-N.mkv``; returns record name (stem) -> sha256."""
    return {
        f"clip-{n}": random_file(export / f"clip-{n}.mkv", size, seed=n)
        for n, size in enumerate(sizes)
    }


def _assert_arrived(
    server: FakeValtThread, tmp_path: Path, expected: dict[str, str]
) -> dict[str, str]:
    """Each file is exactly one record, its bytes identical, the ledger agrees; nothing else."""
    held = server_videos(server)  # its "id" is the video's id
    records = server.snapshot()["records"]
    assert sorted(r["name"] for r in records) == sorted(expected)  # one record per file
    record_ids = {r["name"]: r["id"] for r in records}
    for name, digest in expected.items():
        assert held[name]["sha256"] == digest, name
        assert held[name]["status"] == "ready", name
    rows = {Path(row["path"]).stem: row for row in ledger_rows(tmp_path / "ledger.db")}
    for name, digest in expected.items():
        assert rows[name]["state"] == "done", rows[name]
        assert rows[name]["sha256"] == digest, name
        assert rows[name]["record_id"] == record_ids[name], name
        assert rows[name]["video_id"] == held[name]["id"], name
    return record_ids


def test_files_arrive_identical(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    expected = _files(export, [1 * MiB + 17, 2 * MiB + 4321, 3 * MiB - 5])
    config = write_config(tmp_path, server.url, log={"level": "debug"})  # record.created

    result = run_once(config)

    assert result.returncode == 0, result.stderr
    _assert_arrived(server, tmp_path, expected)
    assert server.snapshot()["deleted"] == []
    events = _events(result.stdout)
    assert len(_named(events, "job.done")) == 3
    assert len(_named(events, "record.created")) == 3


def test_files_arrive_once_despite_faults(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    expected = _files(export, [1 * MiB + 1, 1536 * KiB + 2, 2 * MiB + 3])
    server.set_faults(fail_rate=0.1, bad_gateway_rate=0.05, drop_rate=0.1, token_ttl=7, seed=7)
    config = write_config(tmp_path, server.url)

    result = run_once(config)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    _assert_arrived(server, tmp_path, expected)
    injected = server.snapshot()["faults_injected"]
    # Not vacuous: faults of each switch did happen (the exact mix depends on timing).
    assert sum(injected.get(kind, 0) for kind in ("fail", "bad_gateway", "drop")) >= 3, injected
    assert injected.get("token_expired", 0) >= 1, injected
    assert server.call(lambda fake: fake.logins) > 1
    assert _named(_events(result.stdout), "upload.retry")


def test_ledger_hash_survives_token_renewal(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """A chunk sent twice (401, fresh login, again) is hashed once into the ledger's sha256."""
    expected = {"renewed": random_file(export / "renewed.mkv", 2 * MiB + 77, seed=11)}
    server.set_faults(token_ttl=3)
    config = write_config(tmp_path, server.url, upload={"workers": 1})

    result = run_once(config)

    assert result.returncode == 0, result.stderr
    _assert_arrived(server, tmp_path, expected)
    assert server.call(lambda fake: fake.faults_injected.get("token_expired", 0)) >= 2
    assert server.call(lambda fake: fake.request_counts.get("POST /api/v3/login", 0)) >= 3


def test_413_halves_the_chunk(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    expected = {"big": random_file(export / "big.mkv", 5 * MiB, seed=3)}
    server.set_faults(max_body=1536 * KiB)
    config = write_config(tmp_path, server.url, upload={"chunk_size": "4MiB"})

    result = run_once(config)

    assert result.returncode == 0, result.stderr
    _assert_arrived(server, tmp_path, expected)
    uploads = [
        entry
        for entry in server.call(lambda fake: list(fake.request_log))
        if entry.content_range is not None
    ]
    sizes_by_status: dict[int, set[int]] = {}
    for entry in uploads:
        span, _, _total = entry.content_range.removeprefix("bytes ").partition("/")
        start, _, end = span.partition("-")
        sizes_by_status.setdefault(entry.status, set()).add(int(end) - int(start) + 1)
    assert sizes_by_status[413] == {4 * MiB, 2 * MiB}
    assert sizes_by_status[200] == {1 * MiB}
    reduced = _named(_events(result.stdout), "upload.chunk_reduced")
    assert [(e["refused"], e["chunk_size"]) for e in reduced] == [
        (4 * MiB, 2 * MiB),
        (2 * MiB, 1 * MiB),
    ]


def test_permanent_refusal_fails_that_file_only(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    expected = _files(export, [300 * KiB, 700 * KiB])
    random_file(export / "refused.mkv", 500 * KiB, seed=9)
    server.set_faults(refuse_names=["refused"])
    config = write_config(tmp_path, server.url)

    started = time.monotonic()
    result = run_once(config)

    assert result.returncode == 1
    assert time.monotonic() - started < 20  # a permanent error is not retried until max_wait
    failed = [line for line in result.stderr.splitlines() if line.startswith("not done:")]
    assert len(failed) == 1, result.stderr
    assert str(export / "refused.mkv") in failed[0]
    assert "failed" in failed[0]
    assert "400 Invalid record name" in failed[0]
    _assert_arrived(server, tmp_path, expected)
    assert server.call(lambda fake: fake.request_counts["POST /api/v3/records/create-upload"]) == 3
    row = next(r for r in ledger_rows(tmp_path / "ledger.db") if r["path"].endswith("refused.mkv"))
    assert row["state"] == "failed"
    assert row["fail_reason"] == "http_400"
    assert "Invalid record name" in row["fail_detail"]


def test_attempts_exhausted_fail_the_job(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "doomed.mkv", 600 * KiB)
    server.set_faults(fail_names=["doomed"])  # its create-upload 500s; others are answered
    config = write_config(tmp_path, server.url, upload={"max_attempts": 3})

    started = time.monotonic()
    result = run_once(config)

    assert result.returncode == 1
    assert time.monotonic() - started < 20
    failed = [line for line in result.stderr.splitlines() if line.startswith("not done:")]
    assert len(failed) == 1, result.stderr
    assert "doomed.mkv (failed: http_500" in failed[0]
    assert "gave up after 3 attempts" in failed[0]
    assert "last error:" in failed[0] and "500 Internal Server Error" in failed[0]
    (row,) = ledger_rows(tmp_path / "ledger.db")
    assert row["state"] == "failed"
    assert row["fail_reason"] == "http_500"
    snapshot = server.snapshot()
    assert snapshot["records"] == []
    # Exactly three attempts (each one's create-upload answered 500, each checked with one
    # answered probe), then no more.
    requests = snapshot["requests"]
    assert requests["POST /api/v3/records/create-upload"] == 3
    assert requests["GET /api/v3/admin/general"] == 3 and requests["POST /api/v3/login"] == 1
    assert len(_named(_events(result.stdout), "upload.retry")) == 2


def test_server_without_chunking_gets_the_whole_file(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    expected = {"whole": random_file(export / "whole.mkv", 1 * MiB + 999, seed=5)}
    server.set_faults(no_chunking=True)
    # At debug: record.created tells the two records apart.
    config = write_config(tmp_path, server.url, upload={"workers": 1}, log={"level": "debug"})

    result = run_once(config)

    assert result.returncode == 0, result.stderr
    record_ids = _assert_arrived(server, tmp_path, expected)
    events = _events(result.stdout)
    created = _named(events, "record.created")
    assert len(created) == 2
    first, second = created[0]["record_id"], created[1]["record_id"]
    assert record_ids["whole"] == second
    assert _named(events, "upload.chunking_unsupported")
    # The partial first record is deleted (by the sweeper, before the run ends).
    assert server.snapshot()["deleted"] == [first]
    # The second record got the whole file in one request.
    ranges = [
        entry.content_range
        for entry in server.call(lambda fake: list(fake.request_log))
        if entry.content_range is not None and entry.status == 200
    ]
    size = (export / "whole.mkv").stat().st_size
    assert ranges[-1] == f"bytes 0-{size - 1}/{size}"


_WRITER = r"""
import sys, time
path, pieces = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as handle:
    for n in range(pieces):
        handle.write(bytes([n % 256]) * 65536)
        handle.flush()
        time.sleep(0.2)
    end = time.time()
print(end, flush=True)
"""


def test_slowly_written_file_waits_for_settle(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    path = export / "slow.mkv"
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "1s", "check_open_writers": False},
        log={"level": "debug"},  # file.ready and record.created tell when
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "12"], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: path.exists() and path.stat().st_size > 0, timeout=10)
        result = run_once(config)
        writer_out, _ = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0
    writer_end = float(writer_out.strip())

    assert result.returncode == 0, result.stderr
    digest = sha256_file(path)
    assert path.stat().st_size == 12 * 64 * KiB
    _assert_arrived(server, tmp_path, {"slow": digest})
    events = _events(result.stdout)
    ready = _named(events, "file.ready")
    created = _named(events, "record.created")
    assert len(ready) == 1 and len(created) == 1, [e["event"] for e in events]
    # Queued only once the file had been still for `settle` after the last write.
    assert _when(ready[0]) >= writer_end + 0.8, (_when(ready[0]), writer_end)
    assert _when(created[0]) > writer_end
    assert server.snapshot()["deleted"] == []


STEPS = ("file.discovered", "file.ready", "record.created", "upload.completed")


def _about(output: str, name: str) -> list[tuple[str, str]]:
    """(event, level) of each log line that names the file ``name`` anywhere."""
    return [(e["event"], e["level"]) for e in _events(output) if name in json.dumps(e)]


def test_an_uploaded_file_takes_one_info_line_and_its_steps_show_at_debug(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    digest = random_file(export / "clip.mp4", 300 * KiB, seed=7)
    result = run_once(write_config(tmp_path, server.url))
    assert result.returncode == 0, result.stderr
    record_ids = _assert_arrived(server, tmp_path, {"clip": digest})
    assert _about(result.stdout, "clip.mp4") == [("job.done", "info")]
    # job.done tells what the steps' lines told.
    [done] = _named(_events(result.stdout), "job.done")
    assert done["path"] == str(export / "clip.mp4") and done["name"] == "clip"
    assert (done["record_id"], done["sha256"]) == (record_ids["clip"], digest)
    assert done["size"] == 300 * KiB and done["seconds"] > 0
    # From the unrounded seconds: near, not equal, to what the rounded ones give.
    assert done["mb_per_s"] == pytest.approx(300 * KiB / 1e6 / done["seconds"], rel=0.2)

    debug = tmp_path / "debug"
    random_file(debug / "export" / "take.mp4", 300 * KiB, seed=8)
    result = run_once(write_config(debug, server.url, log={"level": "debug"}))
    assert result.returncode == 0, result.stderr
    lines = _about(result.stdout, "take.mp4")
    assert sorted(lines) == sorted([*((step, "debug") for step in STEPS), ("job.done", "info")])
