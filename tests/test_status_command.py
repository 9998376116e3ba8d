"""``ingestd status``: the daemon's heartbeat (running, not responding, stopped), its
health, and the bounded job lists with each job's tries."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from conftest import (
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from ledger_support import add_job_in

from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.model import Heartbeat, State
from ingestd.ledger.store import SqliteLedger
from ingestd.observe.heartbeat import STALE_AFTER


def _status(config: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("status", "-c", str(config), "--json", *extra)
    assert result.returncode == 0, result.stderr
    if result.stdout.startswith("no ledger yet"):  # the daemon has not made it yet
        return {"daemon": {"state": "not running", "running": False}}
    return dict(json.loads(result.stdout))


def _running(config: Path) -> bool:
    """For polling while the daemon starts: its ledger may exist before its tables do."""
    result = run_cli("status", "-c", str(config), "--json")
    if result.returncode != 0 and "no such table" in result.stderr:
        return False
    return bool(_status(config)["daemon"]["running"])


def _text(config: Path, *extra: str) -> str:
    result = run_cli("status", "-c", str(config), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_running_daemon_shows_its_pid_uptime_server_and_folders_and_a_hung_one_is_named(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 64 * 1024)
    config = write_config(tmp_path, server.url)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _running(config), timeout=30, what="a heartbeat")
        found = wait_for(
            lambda: (
                (s := _status(config))["daemon"]["running"]
                and s["daemon"]["server"]["state"] == "ok"
                and s
            ),
            timeout=30,
            what="a heartbeat after the first upload",
        )
        shown = found["daemon"]
        assert shown["state"] == "running" and shown["pid"] == daemon.pid
        assert shown["mode"] == "daemon" and shown["problems"] == []
        assert shown["folders"] == {"watch.paths[0]": "ok"}
        assert 0 <= shown["uptime_s"] < 60 and shown["heartbeat_age_s"] <= STALE_AFTER
        text = _text(config)
        assert f"daemon: running, pid {daemon.pid}, up " in text
        assert "health: ok" in text and "server: ok" in text
        assert re.search(r"^folders:\n  watch\.paths\[0\] +present +/", text, re.M), text

        daemon.send_signal(signal.SIGSTOP)  # alive, holding the lock, beating no more
        try:
            hung = wait_for(
                lambda: (s := _status(config))["daemon"]["state"] == "not responding" and s,
                timeout=STALE_AFTER + 15,
                what="a stale heartbeat",
            )
            assert hung["daemon"]["running"] is False and hung["daemon"]["pid"] == daemon.pid
            assert f"daemon: NOT RESPONDING: pid {daemon.pid} holds the ledger" in _text(config)
        finally:
            daemon.send_signal(signal.SIGCONT)
        wait_for(lambda: _status(config)["daemon"]["running"], timeout=20, what="beats again")
    finally:
        assert stop_process(daemon) == 0
    stopped = _status(config)["daemon"]
    assert stopped["state"] == "not running" and stopped["stopped_at"] is not None
    assert "daemon: not running (stopped at " in _text(config)


def test_a_killed_daemon_is_not_running_though_its_last_heartbeat_is_recent(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    config = write_config(tmp_path, server.url)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _running(config), timeout=30, what="a heartbeat")
    finally:
        stop_process(daemon, signal.SIGKILL)
    shown = _status(config)["daemon"]
    assert (shown["state"], shown["running"], shown["stopped_at"]) == ("not running", False, None)
    assert shown["heartbeat_age_s"] < STALE_AFTER  # dead all the same: the pid is gone
    assert "daemon: not running (last heartbeat " in _text(config)


def test_without_a_heartbeat_no_daemon_has_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    assert run_cli("pause", "-c", str(config)).returncode == 0  # a ledger, no daemon ever
    assert _status(config)["daemon"] == {
        "state": "not running",
        "running": False,
        "pid": None,
        "heartbeat_at": None,
    }
    assert "daemon: not running (it has written no heartbeat to this ledger)" in _text(config)


async def _fill(ledger_path: Path, root: Path) -> None:
    """25 waiting, 23 failed and 2 queued jobs, one backing off after two errors."""
    ledger = await SqliteLedger.open(ledger_path)
    try:
        n = 0
        for state, many in ((State.WAITING, 25), (State.FAILED, 23), (State.QUEUED, 2)):
            for _ in range(many):
                n += 1
                fields: dict[str, Any] = {}
                if state is State.FAILED:
                    fields = {"fail_reason": "rejected", "fail_detail": "HTTP 400", "attempts": 1}
                await add_job_in(
                    ledger,
                    state,
                    path=str(root / f"clip{n}.mp4"),
                    root=str(root),
                    snapshot=(1000 + n, n, n, 1),
                    **fields,
                )
        await ledger.update(
            n,
            attempts=2,
            next_attempt_at=time.time() + 120,
            fail_detail="the server answered 503 Service Unavailable",
        )
    finally:
        await ledger.close()


def _job_lines(text: str, state: str) -> int:
    return sum(line.startswith("  #") and f" {state} " in line for line in text.splitlines())


def test_lists_are_bounded_at_20_per_group_and_all_shows_every_job(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    asyncio.run(_fill(tmp_path / "ledger.db", tmp_path / "export"))

    text = _text(config)
    assert "  and 5 more (`ingestd status --all` lists them all)" in text  # waiting: 25
    assert "  and 3 more (`ingestd status --all` lists them all)" in text  # failed: 23
    assert _job_lines(text, "waiting") == 20
    backing_off = (
        "attempts 2, next try in 2 min, last error: the server answered 503 Service Unavailable"
    )
    assert backing_off in text.replace("1.9 min", "2 min")
    assert "      attempts 1, again with `ingestd retry " in text

    everything = _text(config, "--all")
    assert "more (`ingestd status --all`" not in everything
    assert _job_lines(everything, "waiting") == 25

    status = _status(config)
    assert status["more"] == {"active": 0, "failed": 3, "waiting": 5}
    assert (len(status["waiting"]), len(status["failed"]), len(status["active"])) == (20, 20, 2)
    queued = status["active"][-1]
    assert queued["attempts"] == 2 and 100 < queued["next_try_s"] <= 120
    assert queued["last_error"] == "the server answered 503 Service Unavailable"
    assert status["failed"][0]["retry"].startswith("ingestd retry ")
    full = _status(config, "--all")
    assert full["more"] == {"active": 0, "failed": 0, "waiting": 0}
    assert (len(full["waiting"]), len(full["failed"])) == (25, 23)


def test_json_keys_are_those_the_readme_documents(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")
    asyncio.run(_fill(tmp_path / "ledger.db", tmp_path / "export"))
    status = _status(config)
    assert set(status) == {
        "ledger",
        "moved",
        "daemon",
        "paused",
        "counts",
        "active",
        "failed",
        "waiting",
        "more",
        "oldest_waiting",
        "pending_deletions",
        "suspected_orphans",
        "more_orphans",
        "server_problem",
        "folders",
    }
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    schema = readme.split("### `ingestd status`\n", 1)[1].split("\n#", 1)[0]
    for key in status:
        assert f"`{key}`" in schema, key
    for key in ("state", "running", "pid", "uptime_s", "heartbeat_age_s", "problems", "folders"):
        assert f"`{key}`" in schema, key
    for key in ("attempts", "last_error", "next_try_s", "retry"):
        assert f"`{key}`" in schema, key


async def _beats(ledger_path: Path) -> tuple[Heartbeat | None, Heartbeat | None]:
    ledger = await SqliteLedger.open(ledger_path)
    try:
        beat = Heartbeat(
            pid=os.getpid(),
            started_at=1.0,
            beat_at=2.0,
            mode="daemon",
            problems=("the ledger is not writable: check ledger.path and its folder",),
            server="unreachable",
            server_detail="the last request failed",
            folders={"watch.paths[0]": "ok", "watch.paths[1]": "missing"},
        )
        await ledger.write_heartbeat(beat)
        read = await ledger.heartbeat()
        await ledger._set_meta("heartbeat", '{"pid": "a later version"}')
        return read, await ledger.heartbeat()
    finally:
        await ledger.close()


def test_a_heartbeat_reads_back_as_written_and_a_foreign_one_as_none(tmp_path: Path) -> None:
    read, foreign = asyncio.run(_beats(tmp_path / "ledger.db"))
    assert read is not None and read.folders["watch.paths[1]"] == "missing"
    assert read.problems[0].startswith("the ledger is not writable")
    assert (read.pid, read.server, read.stopped_at) == (os.getpid(), "unreachable", None)
    assert foreign is None
