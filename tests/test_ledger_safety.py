"""The ledger under abuse: a second daemon, damage, restore, a full disk, a read-only folder,
SIGKILL in the middle of commits. Real processes, real files, the fake Valt server.

What SQLite promises, and what is and is not tested here: the ledger runs in
WAL mode with ``synchronous=FULL``, so a transaction whose COMMIT returned has
been fsynced to the WAL and survives a crash or a power cut - provided the
disk honours fsync - and a transaction that had not committed is rolled back
when the ledger is next opened. SIGKILL from outside at random moments is
tested (the kernel keeps what was written, so it shows that no state the
daemon can be killed in leaves a ledger that fails to open or to pass
``integrity_check``); a real power cut, which also loses what the disk
cache held, cannot be simulated here and is taken on SQLite's word.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    NOBODY,
    KiB,
    assert_no_event,
    free_port,
    health,
    ingestd_env,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    run_once,
    server_videos,
    start_as_nobody,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


def _ledger(config: Path, *action: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ledger", "-c", str(config), *action)


def _integrity(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` as the next start would see the file (hot WAL applied)."""
    conn = sqlite3.connect(path)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _records_per_name(server: FakeValtThread) -> Counter[str]:
    return Counter(record["name"] for record in server.snapshot()["records"])


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(log) if event.get("event") == name]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damage_middle(path: Path) -> None:
    """Overwrite one page in the middle of the file with garbage, as a bad block would."""
    page = 4096
    size = path.stat().st_size
    assert size >= 4 * page, size
    with open(path, "r+b") as handle:
        handle.seek((size // page // 2) * page)
        handle.write(random.Random(7).randbytes(page))


# --- one daemon per ledger ----------------------------------------------------------------


def test_a_second_daemon_refuses_and_names_the_first(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config = write_config(tmp_path, server.url)
    ledger = tmp_path / "ledger.db"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: _events(log, "daemon.started"), timeout=30)
        second = run_cli("run", "-c", str(config))
        assert second.returncode == 1
        assert second.stderr == (
            f"ingestd: another ingestd (pid {daemon.pid}) is using the ledger {ledger}\n"
        )
        restore = _ledger(config, "restore")
        assert restore.returncode == 1
        assert f"another ingestd (pid {daemon.pid})" in restore.stderr
        assert "stop it before restoring" in restore.stderr
        # Reading commands take no lock.
        assert _ledger(config, "check").returncode == 0
        assert run_cli("status", "-c", str(config)).returncode == 0
    finally:
        assert stop_process(daemon) == 0
    assert (tmp_path / "ledger.db.lock").read_text().strip() == str(daemon.pid)


# --- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["page_overwritten", "not_sqlite"])
def test_a_damaged_ledger_stops_the_daemon_before_anything_is_sent(
    tmp_path: Path, server: FakeValtThread, export: Path, damage: str
) -> None:
    config = write_config(tmp_path, server.url)
    ledger = tmp_path / "ledger.db"
    if damage == "page_overwritten":
        for n in range(2):
            random_file(export / f"take {n}.mp4", 20 * KiB, seed=n)
        assert run_once(config).returncode == 0
        _damage_middle(ledger)
    else:
        ledger.write_bytes(random.Random(3).randbytes(64 * KiB))
    random_file(export / "new.mp4", 100 * KiB, seed=99)
    before = (
        _sha256(ledger),
        server.snapshot()["upload_bytes_received"],
        _records_per_name(server),
    )

    result = run_cli("run", "-c", str(config))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"ingestd: ledger error: the ledger {ledger} is damaged (")
    assert f"`ingestd ledger restore -c {config}`" in line
    after = (_sha256(ledger), server.snapshot()["upload_bytes_received"], _records_per_name(server))
    assert after == before  # not recreated, not touched; nothing uploaded

    check = _ledger(config, "check")
    assert check.returncode == 1
    assert "DAMAGED" in check.stdout


def test_a_lost_ledger_is_not_started_afresh_but_restored(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    config = write_config(tmp_path, server.url, ledger={"backups": 1})
    ledger = tmp_path / "ledger.db"
    assert run_once(config).returncode == 0  # its start-up made a first backup
    assert _ledger(config, "backup").returncode == 0
    [kept] = tmp_path.glob("ledger.db.backup-*")  # the newest ledger.backups are kept
    refused = _ledger(config, "restore")
    assert refused.returncode == 1
    assert "passes integrity_check: nothing to restore" in refused.stderr
    for side in ("", "-wal", "-shm"):
        ledger.with_name(ledger.name + side).unlink(missing_ok=True)
    sent = server.snapshot()["upload_bytes_received"]

    result = run_once(config)
    assert result.returncode == 1
    assert f"the ledger {ledger} is missing (but 1 backup(s)" in result.stderr
    assert server.snapshot()["upload_bytes_received"] == sent
    bad = tmp_path / "ledger.db.backup-29991231-235959"  # the newest, and damaged
    bad.write_bytes(b"garbage" * 1000)
    restored = _ledger(config, "restore")
    assert restored.returncode == 0, restored.stderr
    assert f"skipped {bad.name}" in restored.stdout
    assert f"from {kept.name}" in restored.stdout
    assert run_once(config).returncode == 0
    assert server.snapshot()["upload_bytes_received"] == sent
    assert [row["state"] for row in ledger_rows(ledger)] == ["done"]


# --- backup and restore ---------------------------------------------------------------------


def test_restoring_an_old_backup_uploads_nothing_again(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """Backup, more uploads, damage, restore: the next run finds them all on the server."""
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 1, "chunk_size": "64KiB"},
        watch={"settle": "0.1s"},
    )
    ledger = tmp_path / "ledger.db"
    digests = {
        name: random_file(export / f"{name}.mp4", 100 * KiB, seed=n)
        for n, name in enumerate(["a", "b"])
    }
    assert run_once(config).returncode == 0
    # "c" is caught mid-upload when the backup is taken.
    digests["c"] = random_file(export / "c.mp4", 12 * 64 * KiB, seed=3)
    killed = run_once(config, INGESTD_FAILPOINTS="after_chunk_committed:3")
    assert killed.returncode == -signal.SIGKILL
    made = _ledger(config, "backup")
    assert made.returncode == 0, made.stderr
    in_backup = {Path(row["path"]).stem: row["state"] for row in ledger_rows(ledger)}
    assert in_backup == {"a": "done", "b": "done", "c": "uploading"}
    # After the backup: "c" finishes, three files come and go up.
    for n, name in enumerate(["d", "e", "f"], start=4):
        digests[name] = random_file(export / f"{name}.mp4", 150 * KiB, seed=n)
    assert run_once(config).returncode == 0
    assert len(ledger_rows(ledger)) == 6
    _damage_middle(ledger)
    damaged = _sha256(ledger)

    restored = _ledger(config, "restore")
    assert restored.returncode == 0, restored.stderr
    assert "restored" in restored.stdout
    aside_set = sorted(p.name for p in tmp_path.glob("ledger.db.damaged-*"))
    [aside] = [tmp_path / n for n in aside_set if not n.endswith(("-wal", "-shm"))]
    assert set(aside_set) <= {aside.name, aside.name + "-wal", aside.name + "-shm"}
    assert _sha256(aside) == damaged  # kept, byte for byte
    check = _ledger(config, "check")
    assert check.returncode == 0, check.stdout
    assert "restored from ledger.db.backup-" in check.stdout
    sent, records = server.snapshot()["upload_bytes_received"], _records_per_name(server)

    log = tmp_path / "after-restore.log"
    result = run_once(config, "20s")
    log.write_text(result.stdout)
    assert result.returncode == 0, result.stderr
    assert server.snapshot()["upload_bytes_received"] == sent  # not one byte again
    assert _records_per_name(server) == records == Counter(list(digests))  # one record a file
    rows = {Path(row["path"]).stem: row for row in ledger_rows(ledger)}
    videos = server_videos(server)
    for name, digest in digests.items():
        assert rows[name]["state"] == "done"
        assert rows[name]["record_id"] == videos[name]["record_id"]
        assert videos[name]["sha256"] == digest
    adopted = {Path(e["path"]).stem for e in _events(log, "record.adopted_after_restore")}
    assert adopted == {"c", "d", "e", "f"}


# --- a full disk, a read-only folder --------------------------------------------------------


def test_a_full_disk_stops_new_work_and_loses_nothing(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """The ledger cannot grow (``INGESTD_LEDGER_MAX_PAGES``) while jobs are uploading.

    Every file is queued first (the daemon paused), so the failing writes are
    the jobs' own steps (record ids, hashes: rows that grow). Said once, no
    crash loop, no new job, no job failed for it; after a restart with space,
    every file is uploaded exactly once.
    """
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        status={"listen": f"127.0.0.1:{port}"},
        watch={"settle": "0.1s"},
    )
    ledger = tmp_path / "ledger.db"
    names = [f"take {n:02d} " + "y" * 150 for n in range(30)]  # long: rows fill pages fast
    digests = {
        name: random_file(export / f"{name}.mp4", 64 * KiB, n) for n, name in enumerate(names)
    }
    assert run_cli("pause", "-c", str(config)).returncode == 0
    log = tmp_path / "full.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: [r["state"] for r in ledger_rows(ledger)] == ["queued"] * 30, timeout=30)
    finally:
        assert stop_process(daemon) == 0
    assert run_cli("resume", "-c", str(config)).returncode == 0

    daemon = start_daemon(config, log, ingestd_env(INGESTD_LEDGER_MAX_PAGES="1"))
    try:
        [event] = wait_for(lambda: _events(log, "ledger.unwritable"), timeout=30)
        assert "disk is full" in event["problem"]
        wait_for(lambda: health(port)[0] == 503, timeout=20, interval=0.2)
        assert any("ledger" in problem for problem in health(port)[1]["problems"])
        time.sleep(1)  # a job that was already sending may finish
        records = _records_per_name(server)
        time.sleep(2)
        assert _records_per_name(server) == records  # no new work
        assert daemon.poll() is None
        assert len(_events(log, "ledger.unwritable")) == 1  # said once, no crash loop
        assert_no_event(log, "daemon.task_failed", "watcher.failed")
        inside_jobs = len(_events(log, "job.ledger_unwritable"))
        assert inside_jobs >= 1
    finally:
        assert stop_process(daemon) == 0
    assert _integrity(ledger) == ["ok"]
    assert "failed" not in {row["state"] for row in ledger_rows(ledger)}

    # Space again: everything resumes and each file is uploaded once.
    daemon = start_daemon(config, log)
    try:
        wait_for(
            lambda: Counter(row["state"] for row in ledger_rows(ledger)) == {"done": 30},
            timeout=45,
        )
    finally:
        assert stop_process(daemon) == 0
    assert _records_per_name(server) == Counter(list(digests))
    assert {name: video["sha256"] for name, video in server_videos(server).items()} == digests
    print(f"\nfull disk: {inside_jobs} write failure(s) inside jobs, {len(records)} files sent")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root+setpriv")
def test_a_read_only_ledger_folder_stops_new_work_until_it_is_writable(
    nobody_dir: Path, server: FakeValtThread
) -> None:
    export = nobody_dir / "export"
    state = nobody_dir / "state"
    export.mkdir(mode=0o755)
    state.mkdir(mode=0o755)
    os.chown(state, NOBODY, NOBODY)
    ledger = state / "ledger.db"
    config = write_config(nobody_dir, server.url, ledger={"path": str(ledger)})
    config.chmod(0o644)
    digests = {f"clip {n}": random_file(export / f"clip {n}.mp4", 64 * KiB, n) for n in range(2)}
    for path in export.iterdir():
        path.chmod(0o644)
    log = nobody_dir / "daemon.log"

    daemon = start_as_nobody(config, log, PYTHONDONTWRITEBYTECODE="1")
    try:
        wait_for(lambda: [r["state"] for r in ledger_rows(ledger)] == ["done"] * 2, timeout=30)
        state.chmod(0o555)
        [event] = wait_for(lambda: _events(log, "ledger.unwritable"), timeout=15)
        assert f"the ledger's folder {state} is not writable" in event["problem"]
        for n in (2, 3):
            digests[f"clip {n}"] = random_file(export / f"clip {n}.mp4", 64 * KiB, n)
            (export / f"clip {n}.mp4").chmod(0o644)
        time.sleep(3)  # found, but not uploaded: no new work
        assert sum(_records_per_name(server).values()) == 2
        assert daemon.poll() is None
        assert_no_event(log, "daemon.task_failed")

        state.chmod(0o755)
        wait_for(lambda: _events(log, "ledger.writable"), timeout=15)
        wait_for(lambda: [r["state"] for r in ledger_rows(ledger)] == ["done"] * 4, timeout=30)
    finally:
        state.chmod(0o755)
        assert stop_process(daemon) == 0
    assert _records_per_name(server) == Counter(list(digests))

    # A start with the folder read-only: a clear error, nothing touched.
    state.chmod(0o555)
    again = nobody_dir / "again.log"
    assert start_as_nobody(config, again, PYTHONDONTWRITEBYTECODE="1").wait(30) == 1
    assert "ledger error: the ledger is read-only" in again.read_text()
    assert str(ledger) in again.read_text()
    state.chmod(0o755)
    assert _integrity(ledger) == ["ok"]


# --- SIGKILL mid-commit -----------------------------------------------------------------------


# Each is logged right after a ledger commit of the job it names.
WORK_EVENTS = (b'"record.created"', b'"upload.completed"', b'"job.done"')


def test_sigkill_at_random_moments_never_damages_the_ledger(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    """20 SIGKILLs from outside during a busy run (many small files, small chunks).

    After each kill the ledger must open and pass integrity_check; at the end
    every file is on the server exactly once, whole. See the module's
    docstring for what this shows and what it cannot (a power cut).
    """
    kills = 20
    files = 240
    config = write_config(
        tmp_path,
        server.url,
        upload={"workers": 2, "chunk_size": "64KiB"},
        watch={"settle": "0.1s"},
        ledger={"backups": 0},
        log={"level": "debug"},  # WORK_EVENTS: record.created and upload.completed are debug
    )
    ledger = tmp_path / "ledger.db"
    digests = {
        f"shot {n:03d}": random_file(export / f"shot {n:03d}.mp4", 24 * KiB, n)
        for n in range(files)
    }
    rng = random.Random(20)
    log = tmp_path / "daemon.log"
    # Slow answers keep the work going for the whole kill loop, however fast the machine:
    # a kill must land while the ledger is changing, not on a daemon with nothing left.
    server.set_faults(slow_rate=1.0, slow_seconds=0.05)
    survived = busy = 0
    started = time.monotonic()

    def progress() -> list[tuple[int, str, int]]:
        return [(row["id"], row["state"], row["bytes_acked"]) for row in ledger_rows(ledger)]

    def working() -> bool:
        """This daemon has committed work of its own (a start-up scan of 240 files takes
        longer than any fixed pause on a loaded machine: the kill must come after it)."""
        text = log.read_bytes()
        return any(event in text for event in WORK_EVENTS)

    for _ in range(kills):
        before = progress()
        daemon = start_daemon(config, log)
        try:
            wait_for(working, timeout=60)
            time.sleep(rng.uniform(0.0, 0.3))  # then a random moment of the busy stretch
        finally:
            daemon.send_signal(signal.SIGKILL)
            assert daemon.wait(10) == -signal.SIGKILL
        log.write_bytes(b"")  # the next "daemon.started" is the next daemon's
        assert _integrity(ledger) == ["ok"]
        survived += 1
        busy += progress() != before

    print(f"\nkill loop done at {time.monotonic() - started:.1f} s")
    server.set_faults(slow_rate=0.0)
    last = run_once(config, "20s")
    assert last.returncode == 0, last.stderr
    assert Counter(row["state"] for row in ledger_rows(ledger)) == {"done": files}
    print(f"\nSIGKILL: {survived}/{kills} kills survived, {busy} while the ledger was changing")
    assert survived == kills and busy == kills
    assert _records_per_name(server) == Counter(list(digests))  # one record a file, none left over
    assert {name: video["sha256"] for name, video in server_videos(server).items()} == digests


async def test_a_reader_waits_for_a_ledger_being_created_and_names_one_left_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``status`` on a ledger a starting daemon has made but not yet filled waits for it;
    one that stays at an old schema is one clear line, not "no such table"."""
    from ingestd.errors import LedgerError
    from ingestd.ledger import schema
    from ingestd.ledger.store import SqliteLedger

    monkeypatch.setattr(schema, "READER_WAIT", 0.3)
    path = tmp_path / "ledger.db"
    path.touch()  # a daemon's first moment: the file, nothing in it yet
    with pytest.raises(LedgerError, match="start the daemon once to create or upgrade it"):
        await SqliteLedger.open(path, readonly=True)
    monkeypatch.setattr(schema, "READER_WAIT", 10.0)
    opening = asyncio.ensure_future(SqliteLedger.open(path, readonly=True))
    await asyncio.sleep(0.3)
    assert not opening.done()  # waiting, not failing on a missing table
    writer = await SqliteLedger.open(path)  # the daemon gets there meanwhile
    reader = await asyncio.wait_for(opening, 5)
    assert await reader.counts() == await writer.counts()
    await reader.close()
    await writer.close()
