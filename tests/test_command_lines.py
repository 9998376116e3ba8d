"""The commands' own lines: each says what is wrong and what to do, with the right exit code.

- ``retry``: an unknown id exits 2 naming it; a job that is not failed gets one
  line with its state; nothing re-queued exits 1.
- ``run --once``: a job stopped half-way says where it stood, not ``creating: creating``.
- ``check``: a ledger folder that does not exist yet, ``move_to``/``failed_to``
  that are missing, and ``status.listen`` free, taken, or held by this ledger's daemon.
- ``/healthz``: a folder watcher that is not running names the folder.
- a ledger folder on a read-only mount: ``status`` reads it, a write says read-only
  (not "permissions?").
- ``export`` to a full disk (``/dev/full``): one line, no traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REPO,
    free_port,
    ingestd_env,
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd.fake_valt import FakeValtThread


def test_retry_names_unknown_ids_and_the_state_of_jobs_not_failed(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 1000)
    config = str(write_config(tmp_path, server.url, watch={"settle": "0.1s"}))
    assert run_cli("run", "-c", config, "--once", "--max-wait", "5s").returncode == 0

    unknown = run_cli("retry", "-c", config, "1", "99")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert unknown.stderr.strip() == (
        "ingestd: no job 99 in the ledger (`ingestd status` lists them)"
    )

    done = run_cli("retry", "-c", config, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"job 1 ({export / 'a.mp4'}) is done: there is nothing to retry",
        "nothing was re-queued",
    ]
    assert done.stdout == ""

    none_failed = run_cli("retry", "-c", config, "--failed")
    assert none_failed.returncode == 1
    assert none_failed.stderr.strip() == "nothing was re-queued: no job is failed"


def test_run_once_says_where_an_unfinished_job_stood(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 1000)
    config = write_config(tmp_path, server.url, watch={"settle": "0.1s"})
    env = ingestd_env(INGESTD_VALT_PASSWORD="nope")
    ran = run_cli("run", "-c", str(config), "--once", "--max-wait", "5s", env=env)
    assert ran.returncode == 1
    lines = [line for line in ran.stderr.splitlines() if line.startswith("not done:")]
    assert len(lines) == 1, ran.stderr
    state = lines[0].split(" (", 1)[1].split(":", 1)[0]
    assert f"({state}: {state})" not in lines[0], lines[0]
    assert "the next run goes on from there" in lines[0], lines[0]


def _check_lines(config: Path) -> list[str]:
    result = run_cli("check", "-c", str(config))
    return result.stdout.splitlines()


def test_check_tells_a_ledger_folder_to_be_created_from_one_that_is_there(
    tmp_path: Path, export: Path
) -> None:
    folder = tmp_path / "state" / "ingestd"
    config = write_config(tmp_path, "http://127.0.0.1:9", ledger={"path": str(folder / "l.db")})
    lines = _check_lines(config)
    expected = (
        f"ok    ledger folder {folder} does not exist yet: it will be created "
        f"({tmp_path} is writable)"
    )
    assert expected in lines, lines
    assert not folder.exists()  # check creates nothing


def test_check_names_move_to_and_failed_to_that_do_not_exist(tmp_path: Path, export: Path) -> None:
    (tmp_path / "done").mkdir()
    after = {
        "action": "move",
        "move_to": str(tmp_path / "done"),
        "failed_to": str(tmp_path / "bad"),
    }
    config = write_config(tmp_path, "http://127.0.0.1:9", after_upload=after)
    lines = _check_lines(config)
    assert f"ok    after_upload.move_to {tmp_path / 'done'} is writable" in lines, lines
    assert (
        f"FAIL  after_upload.failed_to {tmp_path / 'bad'} does not exist: "
        "create it (ingestd does not)"
    ) in lines, lines


def test_check_status_listen_free_taken_or_held_by_this_ledgers_daemon(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path, server.url, status={"listen": f"127.0.0.1:{port}"})
    assert f"ok    status.listen 127.0.0.1:{port} is free" in _check_lines(config)

    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen(1)
        taken = _check_lines(config)
    assert (
        f"FAIL  status.listen 127.0.0.1:{port} is taken by another program: "
        "stop it, or choose another port"
    ) in taken, taken

    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _get_status(port, "/healthz") is not None)
        held = _check_lines(config)
        assert (
            f"ok    status.listen 127.0.0.1:{port} is held by the ingestd of this ledger "
            f"(pid {daemon.pid})"
        ) in held, held
    finally:
        stop_process(daemon)


def _get_status(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())
    except OSError:
        return None


def test_a_watcher_not_running_names_the_folder(tmp_path: Path, server: FakeValtThread) -> None:
    port = free_port()
    missing = tmp_path / "share"
    config = write_config(
        tmp_path,
        server.url,
        watch={"paths": [str(missing)]},
        status={"listen": f"127.0.0.1:{port}"},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:

        def named() -> list[str] | None:
            got = _get_status(port, "/healthz")
            if got is None or got[0] != 503:
                return None
            found = [p for p in got[1]["problems"] if "folder watcher" in p]
            return found or None

        problems = wait_for(named, timeout=40, interval=0.5)
    finally:
        stop_process(daemon)
    assert any(
        f"watch.paths[0] {missing} does not exist or is not a folder (is the share mounted?)" in p
        for p in problems
    ), problems


@pytest.fixture
def read_only_state(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/state``, a folder the test fills, then mounted read-only over itself."""
    state = tmp_path / "state"
    state.mkdir()
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False, capture_output=True)


def _remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_read_only_ledger_folder_is_read_by_status_and_named_read_only(
    tmp_path: Path, server: FakeValtThread, export: Path, read_only_state: Path
) -> None:
    random_file(export / "a.mp4", 1000)
    ledger = {"path": str(read_only_state / "ledger.db")}
    config = str(write_config(tmp_path, server.url, watch={"settle": "0.1s"}, ledger=ledger))
    assert run_cli("run", "-c", config, "--once", "--max-wait", "5s").returncode == 0
    _remount_read_only(read_only_state)

    status = run_cli("status", "-c", config, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["done"] == 1

    paused = run_cli("pause", "-c", config)
    assert paused.returncode == 1
    assert paused.stderr.startswith(
        "ingestd: ledger error: the ledger's folder is on a read-only file system: "
        "remount it read-write, or set ledger.path to a writable place"
    ), paused.stderr
    assert "permissions?" not in paused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_check_names_a_read_only_watch_folder_read_only(tmp_path: Path) -> None:
    share = tmp_path / "export"
    share.mkdir()
    after = {"action": "delete"}
    config = write_config(tmp_path, "http://127.0.0.1:9", after_upload=after)
    _remount_read_only(share)
    try:
        lines = _check_lines(config)
    finally:
        subprocess.run(["umount", "-l", str(share)], check=False)
    assert (
        f"FAIL  watch folder {share} is on a read-only file system "
        "(after_upload.action needs to write it)"
    ) in lines, lines


def test_export_to_a_full_disk_is_one_line(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "a.mp4", 1000)
    config = str(write_config(tmp_path, server.url, watch={"settle": "0.1s"}))
    assert run_cli("run", "-c", config, "--once", "--max-wait", "5s").returncode == 0
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ingestd", "export", "-c", config],
            env=ingestd_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert result.returncode == 1
    assert result.stderr == (
        "ingestd: export: the CSV could not be written (No space left on device): "
        "the disk is full: free some space, or send the CSV elsewhere\n"
    ), result.stderr


def test_pause_without_a_ledger_creates_it_so_the_daemon_starts_paused(tmp_path: Path) -> None:
    """``pause`` before the first run makes the ledger (and its folder), paused: a daemon
    started afterwards takes no file until ``resume``."""
    ledger = tmp_path / "state" / "deep" / "ledger.db"
    config = write_config(tmp_path, "http://127.0.0.1:9", ledger={"path": str(ledger)})
    paused = run_cli("pause", "-c", str(config))
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == "paused: no new files are taken"
    assert ledger.exists()
    shown = run_cli("status", "-c", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "(PAUSED: `ingestd resume` to go on)" in shown.stdout
