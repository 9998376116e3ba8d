"""Modes under umask 000: ingestd's own files 0600 and folders 0700; moved files keep theirs."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from conftest import (
    REPO,
    ingestd_env,
    ledger_rows,
    random_file,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.backup import existing_backups


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _start_with_umask_0(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """``ingestd run`` as the Docker image starts it: no umask at all."""
    with open(log_file, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "ingestd", "run", "-c", str(config)],
            env=ingestd_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            umask=0,
        )


def test_modes_under_umask_000(tmp_path: Path, server: FakeValtThread, export: Path) -> None:
    server.set_faults(refuse_names=["bad"])  # a permanent failure: set aside to failed_to
    room = export / "room"
    for name, seed in (("clip.mp4", 1), ("bad.mp4", 2)):
        random_file(room / name, 1000, seed=seed)
        (room / name).chmod(0o640)
    room.chmod(0o750)
    export.chmod(0o751)
    state = tmp_path / "state" / "ingestd"  # made by ingestd, both levels
    ledger = state / "ledger.db"
    archive, failed = tmp_path / "archive", tmp_path / "failed"
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        ledger={"path": str(ledger)},
        after_upload={"action": "move", "move_to": str(archive), "failed_to": str(failed)},
    )
    daemon = _start_with_umask_0(config, tmp_path / "daemon.log")
    try:
        wait_for(
            lambda: (
                sorted((r["state"], r["final_path"] is not None) for r in ledger_rows(ledger))
                == [("done", True), ("failed", True)]
            )
        )
        wait_for(lambda: existing_backups(ledger))
        wait_for(lambda: (failed / "room" / "bad.mp4.error.txt").exists())
        own = {
            path.name: _mode(path)
            for path in (
                ledger,
                ledger.with_name("ledger.db-wal"),
                ledger.with_name("ledger.db-shm"),
                ledger.with_name("ledger.db.lock"),
                existing_backups(ledger)[-1],
                failed / "room" / "bad.mp4.error.txt",
            )
        }
    finally:
        assert stop_process(daemon) == 0
    assert set(own.values()) == {0o600}, own
    assert (_mode(state), _mode(state.parent)) == (0o700, 0o700)
    # Moved recordings keep the source's mode; folders made for them, the source folder's.
    for target in (archive, failed):
        assert _mode(target) == 0o751
        assert _mode(target / "room") == 0o750
    assert _mode(archive / "room" / "clip.mp4") == 0o640
    assert _mode(failed / "room" / "bad.mp4") == 0o640
