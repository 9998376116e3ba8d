"""A watch folder that vanishes (renamed away, a share unmounted) is noticed and named, and
nothing is lost or sent twice when it comes back: the daemon as a real process, real
folders and mounts, the fake Valt server over loopback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    KiB,
    free_port,
    health,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    server_videos,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_alerts import Receiver
from test_health import _get, _unhealthy_with

from ingestd.config.schema import AlertsConfig
from ingestd.disk.folders import FolderState
from ingestd.fake_valt import FakeValtThread
from ingestd.observe.alerts import Alerter
from ingestd.observe.metrics import Metrics


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as hook:
        yield hook


def _folder_metric(port: int, folder: str, state: str) -> float:
    text = _get(port, "/metrics")[1]
    pattern = (
        rf'^ingestd_watch_folder_state\{{folder="{re.escape(folder)}",state="{state}"\}} (\S+)$'
    )
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"no folder state metric for {folder} {state}"
    return float(match.group(1))


def _healthy(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (got := health(port))[0] != 200:
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


def _status(config: Path) -> dict[str, Any]:
    shown = run_cli("status", "-c", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    result: dict[str, Any] = json.loads(shown.stdout)
    return result


def _folder_state(config: Path, folder: str) -> str | None:
    for item in _status(config)["folders"]:
        if item["folder"] == folder:
            return str(item["state"])
    return None


def _job(tmp_path: Path, name: str) -> dict[str, Any] | None:
    rows = [r for r in ledger_rows(tmp_path / "ledger.db") if r["path"].endswith("/" + name)]
    return rows[-1] if rows else None


def _done(tmp_path: Path, *names: str) -> bool:
    return all((_job(tmp_path, name) or {}).get("state") == "done" for name in names)


def test_a_folder_renamed_away_is_named_everywhere_and_loses_and_resends_nothing(
    tmp_path: Path, server: FakeValtThread, receiver: Receiver
) -> None:
    room, other = tmp_path / "room", tmp_path / "other"
    room.mkdir()
    other.mkdir()
    for seed, (folder, name) in enumerate(((room, "a.mp4"), (other, "b.mp4"))):
        random_file(folder / name, 100 * KiB, seed=seed)
        (folder / f"{name}.done").touch()
    random_file(room / "c.mp4", 100 * KiB, seed=2)  # waits for c.mp4.done
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        watch={
            "paths": [{"path": str(room), "name": "room-1"}, str(other)],
            "done_marker": ".done",
        },
        status={"listen": f"127.0.0.1:{port}"},
        alerts={"webhook": receiver.url},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_for(lambda: _done(tmp_path, "a.mp4", "b.mp4"))
        waiting = wait_for(lambda: (_job(tmp_path, "c.mp4") or {}).get("wait_reason"))
        assert "c.mp4.done" in waiting
        assert health(port)[0] == 200
        assert _folder_metric(port, "room-1", "present") == 1
        assert _folder_state(config, "room-1") == "present"

        room.rename(tmp_path / "room.away")
        body = _unhealthy_with(port, "watch folder room-1")
        assert f"watch folder room-1 ({room}) is missing" in body["problems"][0]
        assert not any("watch.paths[1]" in problem for problem in body["problems"])
        assert _folder_metric(port, "room-1", "missing") == 1
        assert _folder_metric(port, "room-1", "present") == 0
        assert _folder_metric(port, "watch.paths[1]", "present") == 1
        assert str(room) not in _get(port, "/metrics")[1]  # the label is the name, not the path
        wait_for(lambda: _folder_state(config, "room-1") == "missing")
        shown = run_cli("status", "-c", str(config)).stdout
        line = rf"^  room-1 +MISSING +{re.escape(str(room))}  \(since "
        assert re.search(line, shown, re.MULTILINE), shown
        assert re.search(r"^  watch.paths\[1\] +present ", shown, re.MULTILINE), shown
        wait_for(lambda: receiver.messages("folder.problem"))
        time.sleep(3)  # a few settle passes and a rescan with the folder gone
        job = _job(tmp_path, "c.mp4")
        assert job is not None and job["state"] == "waiting", job  # not forgotten
        assert "room-1 is missing" in job["wait_reason"]
        status = _status(config)
        assert [w["why"] for w in status["waiting"]] == [job["wait_reason"]]

        (tmp_path / "room.away").rename(room)
        (room / "c.mp4.done").touch()
        wait_for(lambda: _done(tmp_path, "c.mp4"))
        _healthy(port)
        assert _folder_metric(port, "room-1", "present") == 1
        wait_for(lambda: _folder_state(config, "room-1") == "present")
        wait_for(lambda: receiver.messages("folder.recovered"))
        time.sleep(2.5)  # another rescan: nothing done is taken up again
    finally:
        assert stop_process(daemon) == 0
    assert sorted(server_videos(server)) == ["a", "b", "c"]
    assert len(server.snapshot()["records"]) == 3
    rows = ledger_rows(tmp_path / "ledger.db")
    assert sorted(r["state"] for r in rows) == ["done", "done", "done"]
    assert len(receiver.messages("folder.problem")) == 1
    assert len(receiver.messages("folder.recovered")) == 1
    problem = receiver.messages("folder.problem")[0]
    assert (problem["folder"], problem["state"]) == ("room-1", "missing")


def test_each_folder_condition_alerts_once_and_names_no_path_when_redacted() -> None:
    alerter = Alerter(
        AlertsConfig(webhook="http://127.0.0.1:9/hook"), redact_paths=True, metrics=Metrics()
    )
    for state in (FolderState.PRESENT, FolderState.MISSING, FolderState.MISSING):
        alerter.folder("room-1", state, "/srv/room 1")
    alerter.folder("watch.paths[1]", FolderState.UNMOUNTED, "/srv/other")
    for state in (FolderState.PRESENT, FolderState.PRESENT):
        alerter.folder("room-1", state, "/srv/room 1")
    sent = []
    while not alerter._queue.empty():
        sent.append(alerter._queue.get_nowait())
    assert [(m["event"], m["folder"]) for m in sent] == [
        ("folder.problem", "room-1"),
        ("folder.problem", "watch.paths[1]"),
        ("folder.recovered", "room-1"),
    ]
    assert "room 1" not in json.dumps(sent)
    assert sent[1]["state"] == "unmounted"


def test_a_folder_renamed_away_mid_upload_fails_nothing_and_resumes_when_back(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    chunk = 256 * KiB  # write_config's chunk_size
    video = export / "live.mp4"
    digest = random_file(video, 40 * chunk, seed=5)
    server.set_faults(slow_rate=1.0, slow_seconds=0.1)
    config = write_config(tmp_path, server.url, upload={"workers": 1})
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: server.snapshot()["upload_bytes_received"] >= 3 * chunk, timeout=30)
        export.rename(tmp_path / "export.away")
        wait_for(lambda: any(e["event"] == "job.folder_away" for e in log_events(log)))
        time.sleep(1)
        [row] = ledger_rows(tmp_path / "ledger.db")
        assert row["state"] == "uploading" and row["fail_reason"] is None, row
        (tmp_path / "export.away").rename(export)
        server.set_faults(slow_rate=0.0)
        wait_for(lambda: _done(tmp_path, "live.mp4"), timeout=60)
    finally:
        assert stop_process(daemon) == 0
    [row] = ledger_rows(tmp_path / "ledger.db")
    assert (row["id"], row["fail_reason"], row["attempts"]) == (1, None, 0), row
    state = server.snapshot()
    assert len(state["records"]) == 1 and not state["deleted"]  # resumed, not started over
    assert server_videos(server)["live"]["sha256"] == digest
    assert not [e for e in log_events(log) if e["event"] == "job.failed"]
