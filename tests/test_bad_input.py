"""Bad input: each kind has one defined outcome, and none crashes the daemon or holds up others.

One daemon run per theme, many bad inputs at once beside normal files. Every
run ends by checking that the normal files arrived, that the process is
still alive, that no background task failed (``daemon.task_failed``), the
folder watch did not fail (``watcher.failed``) and no job hit a bug
(``job.internal_error``). Input -> outcome:

- zero-byte file -> stays ``waiting``, reason "empty file (0 bytes)", no record.
- a file (mode 000) the daemon (uid 65534) cannot read -> stays ``waiting``,
  "cannot read the file (Permission denied)", said once; uploaded as soon as
  it is made readable.
- a folder it cannot read -> ``watcher.unreadable`` naming it at each scan;
  the folder watch keeps running for the rest.
- names with spaces, unicode, quotes, a newline, a tab; 255-byte names (ASCII
  and UTF-8) -> uploaded; record name = the stem; the multipart ``filename``
  is the name with ``"`` CR LF percent-encoded (WHATWG, as browsers and the
  vendor's client send it).
- a name that is not UTF-8 -> no job; one ``file.bad_name`` warning.
- a symlink to a file outside the root -> no job; with ``follow_symlinks``
  uploaded once (a second path to the same content is ``skipped``).
- symlink loops (to the root, to a parent) -> every scan ends; each real file
  is uploaded once, under its real path. A dangling symlink -> ignored.
- a folder named ``x.mp4`` -> no job for it; files inside it are uploaded.
- deleted while ``waiting`` -> forgotten: ``file.vanished``, its row removed.
- deleted while ``queued`` (before any byte) -> ``failed`` ``source_missing``,
  no record created.
- deleted during its upload -> ``failed`` ``source_missing``, the partial
  record deleted.
- truncated during its upload -> ``file.changed``; the partial record
  deleted; the shorter content uploaded into one new record.
- a sidecar that is not valid JSON (and older than the malformed grace) ->
  ``failed`` ``bad_sidecar``, the detail names the sidecar; no record.
- a name too long for its ``done_marker`` -> stays ``waiting``, "cannot look
  for marker ... (File name too long)"; the other files go on.
- create-upload answered 200 with a non-JSON body -> retried (``bad_answer``);
  the record the lost answer left is found and deleted (``record.reconciled``
  ``replaced``): one record per file.
- an HTML 502 from a proxy -> retried (``http_502``, "502 Bad Gateway") to success.
- a server that accepts and never answers -> cut off after ``valt.timeout``
  (``timeout``), retried to success.
- a wrong password -> ``auth.failed`` once; one login attempt in the first
  minute; the job keeps its state, nothing fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NOBODY,
    KiB,
    MiB,
    assert_no_event,
    free_port,
    job_states,
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

from ingestd.fake_valt import FakeValtThread

LONG_ASCII = "x" * 251 + ".mp4"  # 255 bytes, the longest name ext4 allows
LONG_UTF8 = "é" * 125 + "a.mp4"  # 255 bytes, 131 characters
ODD_NAMES = [
    "with  two spaces.mp4",
    "unicodé 日本語 ü.mp4",
    'say "hi" it\'s.mp4',
    "line\nbreak.mp4",
    "tab\tand;semi=colon.mp4",
    LONG_ASCII,
    LONG_UTF8,
]
# Record names are right for these too; the multipart filename is not compared:
# browsers and the vendor's client (urllib3) send "\" raw in the quoted filename,
# and receivers differ (aiohttp reads "\s" as a quoted pair, PHP keeps what follows
# the last "\"), so what a server shows for it is the server's business.
BACKSLASH_NAME = "back\\slash.mp4"
NOT_UTF8 = os.fsdecode(b"caf\xe9 latin-1.mp4")


def multipart_filename(name: str) -> str:
    """The ``filename`` a browser (WHATWG) sends: ``"`` CR LF percent-encoded, else raw UTF-8."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def rows_by_name(ledger: Path) -> dict[str, dict[str, Any]]:
    return {Path(row["path"]).name: row for row in ledger_rows(ledger)}


def filenames_on_server(server: FakeValtThread) -> dict[str, str | None]:
    """Record name -> the multipart filename its video arrived with."""
    return server.call(
        lambda fake: {r.name: r.videos[0].filename for r in fake.records.values() if r.videos}
    )


def assert_healthy(process: subprocess.Popen[bytes], log: Path) -> None:
    """Alive; no background task failed, the folder watch did not fail, no job or worker hit a
    bug."""
    assert process.poll() is None, tail(log)
    assert_no_event(
        log, "daemon.task_failed", "watcher.failed", "job.internal_error", "worker.failed"
    )


def wait_alive(
    process: subprocess.Popen[bytes], log: Path, predicate: Any, timeout: float = 30
) -> Any:
    """``wait_for``, failing at once (with the log's end) if the daemon exits meanwhile."""

    def check() -> Any:
        if process.poll() is not None:
            raise AssertionError(f"the daemon exited ({process.returncode}):\n{tail(log)}")
        return predicate()

    return wait_for(check, timeout=timeout)


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(line[:400] for line in log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A folder nobody (uid 65534) can reach and write: pytest's tmp_path is root's alone."""
    base = Path(tempfile.mkdtemp(prefix="ingestd-bad-input-"))
    os.chmod(base, 0o755)
    os.chown(base, NOBODY, NOBODY)
    try:
        yield base
    finally:
        for folder, dirs, _files in os.walk(base):
            for name in dirs:
                os.chmod(os.path.join(folder, name), 0o755)  # the 000 folder, to remove it
        shutil.rmtree(base, ignore_errors=True)


def age(path: Path, seconds: float) -> None:
    """Set the mtime ``seconds`` into the past, without following a symlink."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


# --- files -------------------------------------------------------------------------------------


def test_bad_files_as_an_unprivileged_daemon(
    tmp_path: Path, server: FakeValtThread, open_base: Path
) -> None:
    export = open_base / "export"
    outside = open_base / "outside"
    digests = {
        "normal.mp4": random_file(export / "normal.mp4", 300 * KiB, seed=1),
        "deep.mov": random_file(export / "a" / "b" / "deep.mov", 200 * KiB, seed=2),
        "inside.mp4": random_file(export / "clips.mov" / "inside.mp4", 100 * KiB, seed=3),
    }
    for n, name in enumerate([*ODD_NAMES, BACKSLASH_NAME]):
        digests[name] = random_file(export / name, 10 * KiB + n, seed=10 + n)
    (export / "empty.mp4").touch()
    locked = export / "locked.mp4"
    digests["locked.mp4"] = random_file(locked, 50 * KiB, seed=4)
    locked.chmod(0o000)
    closed = export / "closed"
    random_file(closed / "behind a locked door.mp4", 10 * KiB, seed=5)
    closed.chmod(0o000)
    random_file(export / NOT_UTF8, 10 * KiB, seed=6)
    random_file(outside / "elsewhere.mp4", 10 * KiB, seed=7)
    (export / "link-out.mp4").symlink_to(outside / "elsewhere.mp4")
    (export / "a" / "loop").symlink_to(export)
    (export / "folder.mp4").mkdir()
    random_file(export / "meta.mp4", 20 * KiB, seed=8)
    (export / "meta.mp4.json").write_text('{"name": "Interview", "template": {1: "x"}')
    age(export / "meta.mp4.json", 120)  # malformed for longer than the grace: not half-written
    digests["half.mp4"] = random_file(export / "half.mp4", 20 * KiB, seed=9)
    (export / "half.mp4.json").write_text('{"name": "Half wri')  # still being written

    config = write_config(open_base, server.url, watch={"rescan_interval": "1s"})
    log = tmp_path / "daemon.log"
    ledger = open_base / "ledger.db"
    daemon = start_as_nobody(config, log)
    try:
        # A sidecar still malformed within its grace (10 s) is being written: wait.
        half_wait = "sidecar half.mp4.json is not valid yet ("
        wait_alive(
            daemon,
            log,
            lambda: any(e.get("reason", "").startswith(half_wait) for e in log_events(log)),
        )
        (export / "half.mp4.json").write_text('{"name": "Half written"}')
        uploaded = {"normal.mp4", "deep.mov", "inside.mp4", "half.mp4", *ODD_NAMES, BACKSLASH_NAME}

        def settled() -> bool:
            now = job_states(ledger)
            rows = rows_by_name(ledger)
            return (
                all(now.get(name) == "done" for name in uploaded)
                and now.get("meta.mp4") == "failed"
                and all(rows[name]["wait_reason"] for name in ("locked.mp4", "empty.mp4"))
            )

        wait_alive(daemon, log, settled, timeout=40)
        # Two more rescans: nothing new turns up (the loop, the links, the odd names).
        scans = sum(e["event"] == "watcher.rescan" for e in log_events(log))
        wait_alive(
            daemon,
            log,
            lambda: sum(e["event"] == "watcher.rescan" for e in log_events(log)) >= scans + 2,
        )
        rows = rows_by_name(ledger)
        assert rows["empty.mp4"]["state"] == "waiting"
        assert rows["empty.mp4"]["wait_reason"] == "empty file (0 bytes)"
        assert rows["locked.mp4"]["state"] == "waiting"
        assert rows["locked.mp4"]["wait_reason"] == "cannot read the file (Permission denied)"
        assert rows["meta.mp4"]["fail_reason"] == "bad_sidecar"
        assert "meta.mp4.json" in rows["meta.mp4"]["fail_detail"]
        assert "not valid JSON" in rows["meta.mp4"]["fail_detail"]
        expected = uploaded | {"empty.mp4", "locked.mp4", "meta.mp4"}
        assert set(rows) == expected  # no folder, link, loop, locked-away or undecodable file
        assert all("/loop/" not in row["path"] for row in rows.values())

        # The unreadable file becomes readable: it goes on by itself.
        locked.chmod(0o644)
        wait_alive(daemon, log, lambda: job_states(ledger).get("locked.mp4") == "done", timeout=20)
        # A waiting file that is deleted is forgotten.
        (export / "empty.mp4").unlink()
        wait_alive(daemon, log, lambda: "empty.mp4" not in job_states(ledger), timeout=20)
        assert_healthy(daemon, log)
    finally:
        assert stop_process(daemon) == 0

    videos = server_videos(server)
    filenames = filenames_on_server(server)
    record_names = {name: Path(name).stem for name in [*uploaded, "locked.mp4"]}
    record_names["half.mp4"] = "Half written"  # from its sidecar, once complete
    for name, record in record_names.items():
        assert videos[record]["sha256"] == digests[name], name
        if name != BACKSLASH_NAME:
            assert filenames[record] == multipart_filename(name), name
    assert set(videos) == set(record_names.values())
    assert len(server.snapshot()["records"]) == len(videos)  # one record per file

    events = log_events(log)
    waits = {(Path(e["path"]).name, e["reason"]) for e in events if e["event"] == "file.waiting"}
    assert ("empty.mp4", "empty file (0 bytes)") in waits
    assert ("locked.mp4", "cannot read the file (Permission denied)") in waits
    locked_waits = [e for e in events if e["event"] == "file.waiting" and e["path"] == str(locked)]
    assert len(locked_waits) == 1, locked_waits  # said once, not at every settle tick
    vanished = [e for e in events if e["event"] == "file.vanished"]
    assert [Path(e["path"]).name for e in vanished] == ["empty.mp4"]
    unreadable = [e for e in events if e["event"] == "watcher.unreadable"]
    assert unreadable and {e["path"] for e in unreadable} == {str(closed)}
    assert {e["error"] for e in unreadable} == {"Permission denied"}
    bad_names = [e for e in events if e["event"] == "file.bad_name"]
    assert len(bad_names) == 1, bad_names  # once, not at every rescan
    assert bad_names[0]["path"] == str(export / "caf\\xe9 latin-1.mp4")
    failed = [e for e in events if e["event"] == "job.failed"]
    assert [(Path(e["path"]).name, e["reason"]) for e in failed] == [("meta.mp4", "bad_sidecar")]


def test_symlinks_followed_when_asked_and_loops_end(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    outside = tmp_path / "outside"
    digests = {
        "elsewhere": random_file(outside / "elsewhere.mp4", 30 * KiB, seed=1),
        "top": random_file(export / "top.mp4", 30 * KiB, seed=2),
        "below": random_file(export / "sub" / "below.mp4", 30 * KiB, seed=3),
    }
    (export / "link-out.mp4").symlink_to(outside / "elsewhere.mp4")
    (export / "linked-dir").symlink_to(outside)  # the same file, reached a second way
    (export / "sub" / "up").symlink_to("..")  # a loop through a parent
    (export / "self").symlink_to(export)  # a loop through the root itself
    (export / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    config = write_config(
        tmp_path, server.url, watch={"follow_symlinks": True, "rescan_interval": "1s"}
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        done = {"link-out.mp4", "top.mp4", "below.mp4"}
        wait_alive(
            daemon,
            log,
            lambda: (
                done
                <= {
                    n
                    for n, s in job_states(tmp_path / "ledger.db").items()
                    if s in ("done", "skipped")
                }
            ),
        )
        scans = sum(e["event"] == "watcher.rescan" for e in log_events(log))
        wait_alive(
            daemon,
            log,
            lambda: sum(e["event"] == "watcher.rescan" for e in log_events(log)) >= scans + 3,
        )
        assert_healthy(daemon, log)
    finally:
        assert stop_process(daemon) == 0
    rows = ledger_rows(tmp_path / "ledger.db")
    paths = sorted(row["path"] for row in rows)
    # Real folders by their real path; the loops add nothing; the outside file once or twice
    # (the link, and linked-dir/elsewhere.mp4), its second path skipped as a duplicate.
    assert str(export / "top.mp4") in paths and str(export / "sub" / "below.mp4") in paths
    assert not any("/self/" in p or "/up/" in p for p in paths), paths
    assert str(export / "dangling.mp4") not in paths
    by_state: dict[str, list[str]] = {}
    for row in rows:
        by_state.setdefault(row["state"], []).append(
            Path(row["path"]).relative_to(export).as_posix()
        )
    assert sorted(by_state["done"] + by_state.get("skipped", [])) == sorted(
        ["link-out.mp4", "linked-dir/elsewhere.mp4", "top.mp4", "sub/below.mp4"]
    ), by_state
    assert len(by_state.get("skipped", [])) == 1, by_state
    videos = server_videos(server)
    assert len(server.snapshot()["records"]) == 3
    assert videos["top"]["sha256"] == digests["top"]
    assert videos["below"]["sha256"] == digests["below"]
    outside_record = next(v for name, v in videos.items() if name in ("link-out", "elsewhere"))
    assert outside_record["sha256"] == digests["elsewhere"]


def test_a_name_too_long_for_its_done_marker_waits_and_holds_up_nothing(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """``LONG_ASCII + ".done"`` is 260 bytes: looking for it fails (ENAMETOOLONG)."""
    digest = random_file(export / "ok.mp4", 20 * KiB)
    (export / "ok.mp4.done").touch()
    random_file(export / LONG_ASCII, 20 * KiB, seed=1)
    config = write_config(tmp_path, server.url, watch={"done_marker": ".done"})
    ran = run_once(config, "3s")
    assert ran.returncode == 1, ran.stderr  # the long name is not done
    assert server_videos(server)["ok"]["sha256"] == digest
    assert set(server_videos(server)) == {"ok"}
    rows = rows_by_name(tmp_path / "ledger.db")
    assert rows["ok.mp4"]["state"] == "done"
    assert rows[LONG_ASCII]["state"] == "waiting"
    marker = LONG_ASCII + ".done"
    assert (
        rows[LONG_ASCII]["wait_reason"] == f"cannot look for marker {marker} (File name too long)"
    )
    assert_no_event(ran.stdout, "daemon.task_failed")


# --- files that change under the daemon ----------------------------------------------------------


def test_files_deleted_or_truncated_before_and_during_upload(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    keep = random_file(export / "keep.mp4", 300 * KiB, seed=1)
    random_file(export / "gone-queued.mp4", 300 * KiB, seed=2)
    random_file(export / "truncated.mp4", 4 * MiB, seed=3)
    random_file(export / "gone-midway.mp4", 4 * MiB, seed=4)
    # At debug: record.created tells which files had a record made.
    config = write_config(tmp_path, server.url, upload={"workers": 4}, log={"level": "debug"})
    ledger = tmp_path / "ledger.db"
    # Paused: files are found, checked and queued, but no worker takes one.
    assert run_cli("pause", "-c", str(config)).returncode == 0
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        everything = {"keep.mp4", "gone-queued.mp4", "truncated.mp4", "gone-midway.mp4"}
        wait_alive(daemon, log, lambda: job_states(ledger) == dict.fromkeys(everything, "queued"))
        (export / "gone-queued.mp4").unlink()  # between the scan and the upload
        # Slow answers, so that the two big files are caught in the middle.
        server.set_faults(slow_rate=1.0, slow_seconds=0.15)
        assert run_cli("resume", "-c", str(config)).returncode == 0

        def acked(name: str) -> int:
            return int(rows_by_name(ledger)[name]["bytes_acked"])

        wait_alive(daemon, log, lambda: acked("truncated.mp4") >= 256 * KiB)
        first_record = rows_by_name(ledger)["truncated.mp4"]["record_id"]
        os.truncate(export / "truncated.mp4", MiB + 123)
        wait_alive(daemon, log, lambda: acked("gone-midway.mp4") >= 256 * KiB)
        midway_record = rows_by_name(ledger)["gone-midway.mp4"]["record_id"]
        (export / "gone-midway.mp4").unlink()
        server.set_faults(slow_rate=0.0)

        def finished() -> bool:
            now = job_states(ledger)
            deletions = pending_deletions(ledger)
            return now.get("keep.mp4") == now.get("truncated.mp4") == "done" and not deletions

        wait_alive(daemon, log, finished, timeout=40)
        assert_healthy(daemon, log)
    finally:
        assert stop_process(daemon) == 0
    rows = rows_by_name(ledger)
    assert rows["gone-queued.mp4"]["state"] == "failed"
    assert rows["gone-queued.mp4"]["fail_reason"] == "source_missing"
    assert rows["gone-midway.mp4"]["state"] == "failed"
    assert rows["gone-midway.mp4"]["fail_reason"] == "source_missing"
    videos = server_videos(server)
    assert set(videos) == {"keep", "truncated"}  # the partial records are gone
    assert videos["keep"]["sha256"] == keep
    assert videos["truncated"]["sha256"] == sha256_file(export / "truncated.mp4")
    assert videos["truncated"]["received"] == MiB + 123
    assert {first_record, midway_record} <= set(server.snapshot()["deleted"])
    events = log_events(log)
    created = [Path(e["path"]).name for e in events if e["event"] == "record.created"]
    assert "gone-queued.mp4" not in created  # nothing was sent for it
    assert created.count("truncated.mp4") == 2
    changed = [e for e in events if e["event"] == "file.changed"]
    assert [Path(e["path"]).name for e in changed] == ["truncated.mp4"]


async def test_two_workers_ledger_transactions_at_once_do_not_collide(tmp_path: Path) -> None:
    """What the test above ran into: two workers' transactions on the one connection
    (a file gone and a file changed, each with a partial record) at the same moment."""
    from ledger_support import add_job_in

    from ingestd.ledger.model import State
    from ingestd.ledger.store import SqliteLedger

    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    try:
        jobs = []
        for n in range(6):
            job = await add_job_in(
                ledger,
                State.UPLOADING,
                path=f"/x/{n}.mp4",
                root="/x",
                snapshot=(1, 1, n, 1),
                record_id=f"r{n}",
                video_id="v",
            )
            jobs.append(job)
        await asyncio.gather(
            *(ledger.fail(job, "source_missing", "gone", delete_record=True) for job in jobs[:3]),
            *(ledger.source_changed(job, (2, 2, 2, 2), "changed") for job in jobs[3:]),
            ledger.update(jobs[0].id, attempts=7),
        )
        assert await ledger.pending_deletions() == 6
        assert await ledger.counts() == {
            **dict.fromkeys([s.value for s in State], 0),
            "failed": 3,
            "waiting": 3,
        }
        assert (await ledger.get_job(jobs[0].id)).attempts == 7
    finally:
        await ledger.close()


def pending_deletions(ledger: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM deletions").fetchone()[0])
    finally:
        conn.close()


# --- a server that misbehaves ------------------------------------------------------------------


def test_non_json_answers_html_502_and_hangs_are_retried_to_one_record_each(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    digests = {
        f"clip-{n}": random_file(export / f"clip-{n}.mp4", 600 * KiB, seed=n) for n in range(3)
    }
    config = write_config(
        tmp_path,
        server.url,
        valt={"timeout": "1s"},
        upload={"max_attempts": 200, "backoff_max": "0.3s"},
    )
    log = tmp_path / "daemon.log"
    # Each fault in turn, for every request, until it has struck a few times.
    server.set_faults(bad_gateway_rate=1.0)
    daemon = start_daemon(config, log)
    try:

        def injected(kind: str) -> int:
            return int(server.snapshot()["faults_injected"].get(kind, 0))

        wait_alive(daemon, log, lambda: injected("bad_gateway") >= 4)
        server.set_faults(bad_gateway_rate=0.0, not_json_rate=1.0)
        wait_alive(daemon, log, lambda: injected("not_json") >= 4)
        server.set_faults(not_json_rate=0.0, hang_rate=1.0)
        wait_alive(daemon, log, lambda: injected("hang") >= 3)
        server.set_faults(hang_rate=0.0)
        done = lambda: set(job_states(tmp_path / "ledger.db").values()) == {"done"}  # noqa: E731
        wait_alive(daemon, log, done, timeout=40)
        wait_alive(daemon, log, lambda: pending_deletions(tmp_path / "ledger.db") == 0)
        assert_healthy(daemon, log)
    finally:
        assert stop_process(daemon) == 0
    videos = server_videos(server)
    assert {name: v["sha256"] for name, v in videos.items()} == digests
    assert len(server.snapshot()["records"]) == 3  # one record per file, no orphan
    events = log_events(log)
    retries = [e for e in events if e["event"] == "upload.retry"]
    reasons = {e["reason"] for e in retries}
    assert "bad_answer" in reasons, reasons
    # A 502 or a hang on every request, the probe's too, is an outage, not the file's retry.
    outages = [e["error"] for e in events if e["event"] == "server.unreachable"]
    assert len(outages) >= 2 and any("502 Bad Gateway" in error for error in outages), outages
    errors = [*outages, *(e["error"] for e in retries)]
    assert all("<html" not in error for error in errors)  # the page's title, not its HTML
    reconciled = [e for e in events if e["event"] == "record.reconciled"]
    assert any(e["outcome"] == "replaced" for e in reconciled), reconciled
    # Every record a lost answer left behind was deleted again.
    assert len(server.snapshot()["deleted"]) == sum(e["outcome"] == "replaced" for e in reconciled)
    assert_no_event(events, "job.failed")


def test_a_wrong_password_is_tried_once_a_minute_and_fails_no_job(
    tmp_path: Path, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    with FakeValtThread(tmp_path / "server", users={"ingest": "the-right-one"}) as server:
        port = free_port()
        config = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
        log = tmp_path / "daemon.log"
        daemon = start_daemon(config, log)
        try:
            wait_alive(daemon, log, lambda: server.snapshot()["login_failures"] >= 1)
            time.sleep(5)  # what a retrying client would fill with attempts
            assert server.snapshot()["login_failures"] == 1
            assert server.snapshot()["logins"] == 0
            assert_healthy(daemon, log)
            with pytest.raises(urllib.error.HTTPError) as unhealthy:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
            assert unhealthy.value.code == 503
            problems = json.loads(unhealthy.value.read())["problems"]
            unhealthy.value.close()
            assert any(p.startswith("credentials refused by the server") for p in problems)
            rows = ledger_rows(tmp_path / "ledger.db")
            # It keeps its state: "creating" is committed before the login that was refused
            # (on the next attempt, the search for a record made meanwhile finds none).
            assert [row["state"] for row in rows] == ["creating"]
            assert rows[0]["attempts"] == 0
            shown = run_cli("status", "-c", str(config)).stdout
            assert "SERVER: credentials refused by the server" in shown, shown
        finally:
            assert stop_process(daemon) == 0
    events = log_events(log)
    assert [e["event"] for e in events].count("auth.failed") == 1
    assert_no_event(events, "job.failed", "upload.retry")
