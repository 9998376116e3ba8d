"""``ingestd plan``: a dry run over real files, with the fake Valt server over loopback.

Every file present gets a verdict (upload, wait, skip, fail) and a reason; uploads show
the record name, template and share the rules and sidecars resolve to. Nothing is
written: no record on the server, no ledger created or changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ingestd.fake_valt import FakeValtThread
from ingestd.intake.mp4_build import mp4_pieces
from tests.conftest import REPO, free_port, ingestd_env, ledger_rows, run_cli, write_config

OLD = 3600.0  # seconds: long settled


def _aged(path: Path, age: float = OLD) -> Path:
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def _video(path: Path, size: int = 4000, *, complete: bool = True, age: float = OLD) -> Path:
    pieces = mp4_pieces(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(pieces if complete else pieces[:-1]))
    return _aged(path, age)


def _text(path: Path, text: str, age: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return _aged(path, age)


def _plan(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("plan", "-c", str(config), *extra)


def _by_name(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return {Path(item["path"]).name: item for item in data["files"]}


def _writes(server: FakeValtThread) -> list[str]:
    """Requests that could change the server's state (a login makes a session only)."""
    counts = server.call(lambda fake: dict(fake.request_counts))
    return [key for key in counts if not key.startswith("GET") and "login" not in key]


def _config(tmp_path: Path, url: str, **sections: Any) -> Path:
    base: dict[str, Any] = {
        "watch": {"settle": "30s", "check_container": True},
        "record": {
            "name": "{parent} {stem}",
            "template_id": 1,
            "template": {1: "K-{stem}"},
            "share": {"groups": ["staff", 9]},
            "rules": [{"match": "room-3/**", "name": "room {stem}", "share": {"users": ["bob"]}}],
        },
    }
    base.update(sections)
    return write_config(tmp_path, url, **base)


def test_plan_says_what_each_file_would_get(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    _video(export / "room-3" / "a.mp4")  # a rule names it and shares it with bob
    _video(export / "b.mp4")
    _text(export / "b.mp4.json", json.dumps({"name": "Case 7", "share": {"users": ["alice"]}}))
    _video(export / "fresh.mp4", age=0)  # still settling
    _video(export / "cut.mp4", complete=False)  # no moov box yet
    _video(export / "open.mp4")
    _video(export / "bad.mp4")
    _text(export / "bad.mp4.json", "{not json")
    _video(export / "who.mp4")
    _text(export / "who.mp4.json", json.dumps({"share": {"users": ["nobody-by-that-name"]}}))
    shutil.copy(export / "b.mp4", export / "copy.mp4")
    _aged(export / "copy.mp4")
    _text(export / "clip.part", "partial")
    _text(export / "notes.txt", "notes")
    _video(export / ".trash" / "old.mp4")
    config = _config(tmp_path, server.url)
    with open(export / "open.mp4", "ab"):  # a recorder still holds it open for writing
        result = _plan(config, "--json")
        text = _plan(config)
    files = _by_name(result)

    a = files["a.mp4"]
    assert a["action"] == "upload"
    assert a["record"]["name"] == "room a"
    assert a["record"]["template"] == {"1": "K-a"}
    assert a["record"]["template_id"] == 1
    # The rule's share replaces the configuration's.
    assert a["record"]["share"] == {"users": [{"name": "bob", "id": 3}], "groups": []}
    b = files["b.mp4"]
    assert b["action"] == "upload"
    assert b["record"]["name"] == "Case 7"  # the sidecar's name over the config's
    assert b["record"]["share"] == {
        "users": [{"name": "alice", "id": 2}],  # the sidecar's users over the config's none
        "groups": [{"name": "staff", "id": 4}, {"id": 9}],
    }
    assert b["record"]["sidecar"].endswith("b.mp4.json")

    assert files["fresh.mp4"]["action"] == "wait"
    assert "still being written" in files["fresh.mp4"]["why"]
    assert files["cut.mp4"]["action"] == "wait"
    assert "moov" in files["cut.mp4"]["why"]
    assert files["open.mp4"]["action"] == "wait"
    assert files["open.mp4"]["why"].startswith("open for writing by pid")
    assert files["copy.mp4"] == {
        "path": str(export / "copy.mp4"),
        "action": "wait",
        "why": f"same content as {export / 'b.mp4'}, which is uploaded first",
    }
    assert files["bad.mp4"]["action"] == "fail"
    assert files["bad.mp4"]["why"].startswith(
        "bad_sidecar: sidecar bad.mp4.json: is not valid JSON"
    )
    assert files["who.mp4"]["action"] == "fail"
    assert "nobody-by-that-name" in files["who.mp4"]["why"]

    assert files["b.mp4.json"] == {
        "path": str(export / "b.mp4.json"),
        "action": "skip",
        "why": "sidecar of b.mp4",
    }
    assert files["clip.part"]["why"] == "excluded by watch.exclude '*.part'"
    assert files["notes.txt"]["why"].startswith("not matched by watch.include (*.mp4")
    assert files["old.mp4"]["why"] == "in folder .trash, excluded by watch.exclude '.*'"

    data = json.loads(result.stdout)
    assert data["totals"] == {"upload": 2, "wait": 4, "skip": 6, "fail": 2}
    assert data["shares_resolved"] is True and data["ledger"] is None
    # Read-only: nothing on the server, no ledger made.
    assert server.snapshot()["records"] == []
    assert _writes(server) == []
    assert not (tmp_path / "ledger.db").exists()

    assert text.returncode == 0, text.stderr
    assert f"upload  {export / 'room-3' / 'a.mp4'}" in text.stdout
    assert "        name:     'room a'" in text.stdout
    assert "        template: template 1: 1='K-a'" in text.stdout
    assert "        users:    bob (3)" in text.stdout
    assert "        groups:   staff (4), 9" in text.stdout  # b.mp4's
    assert "totals: upload 2  wait 4  skip 6  fail 2" in text.stdout


def test_plan_reads_the_ledger_without_changing_it(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    _video(export / "done.mp4")
    _video(export / "broken.mp4")
    _text(export / "broken.mp4.json", "[not, a, mapping]")
    config = _config(tmp_path, server.url, watch={"settle": "0.3s", "check_container": True})
    once = run_cli("run", "-c", str(config), "--once", "--max-wait", "30s")
    assert once.returncode == 1, once.stderr  # broken.mp4 failed
    records = len(server.snapshot()["records"])
    shutil.copy(export / "done.mp4", export / "again.mp4")
    _aged(export / "again.mp4")
    _video(export / "new.mp4")
    ledger = tmp_path / "ledger.db"
    before = ledger_rows(ledger)
    files = _by_name(_plan(config, "--json"))
    assert files["done.mp4"]["action"] == "skip"
    assert files["done.mp4"]["why"] == "already uploaded"
    jobs = {Path(row["path"]).name: row["id"] for row in before}
    done_job, failed_job = jobs["done.mp4"], jobs["broken.mp4"]
    assert files["done.mp4"]["job"] == done_job
    assert files["broken.mp4"]["action"] == "skip"
    assert files["broken.mp4"]["why"].startswith("failed: bad_sidecar: sidecar broken.mp4.json")
    assert files["broken.mp4"]["why"].endswith(f"(`ingestd retry {failed_job}`)")
    assert files["again.mp4"]["action"] == "skip"
    assert files["again.mp4"]["why"] == f"same content as {export / 'done.mp4'}"
    assert files["new.mp4"]["action"] == "upload"
    assert ledger_rows(ledger) == before
    assert len(server.snapshot()["records"]) == records


def test_plan_lists_everything_with_the_server_unreachable(tmp_path: Path, export: Path) -> None:
    _video(export / "room-3" / "a.mp4")
    _text(export / "skip.tmp", "x")
    config = _config(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = _plan(config, "--json")
    data = json.loads(result.stdout)
    files = _by_name(result)
    assert files["a.mp4"]["action"] == "upload"
    assert files["a.mp4"]["record"]["name"] == "room a"
    assert files["a.mp4"]["record"]["share"] == {
        "users": [{"name": "bob", "id": None}],
        "groups": [],
    }
    assert files["skip.tmp"]["action"] == "skip"
    assert data["shares_resolved"] is False
    assert "cannot be reached" in data["shares_problem"]
    text = _plan(config)
    assert text.returncode == 0
    assert "        users:    bob (unresolved)" in text.stdout
    assert "share names could not be resolved: " in text.stdout


def test_plan_asks_no_server_when_no_name_needs_it(tmp_path: Path, export: Path) -> None:
    _video(export / "a.mp4")
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", record={"name": "x {stem}"})
    data = json.loads(_plan(config, "--json").stdout)
    assert data["files"][0]["record"]["name"] == "x a"
    assert data["shares_resolved"] is True


def test_plan_bad_configuration_exits_2(tmp_path: Path, export: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", watch={"settel": "1s"})
    result = _plan(config)
    assert result.returncode == 2
    assert "watch.settel" in result.stderr
    assert not (tmp_path / "ledger.db").exists()


def test_plan_names_a_missing_watch_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9")  # export/ is never made
    data = json.loads(_plan(config, "--json").stdout)
    assert data["folders"] == [
        {"path": str(tmp_path / "export"), "problem": "missing (not a folder)"}
    ]
    assert data["files"] == []


def test_plan_does_not_load_the_daemon() -> None:
    code = (
        "import sys, ingestd.commands.plan;"
        "print([m for m in sys.modules if m.startswith(('ingestd.daemon', 'ingestd.upload.job'))])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=ingestd_env(), cwd=REPO, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_what_plan_says_is_what_the_daemon_uploads(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    _video(export / "room-3" / "a.mp4")
    _video(export / "b.mp4")
    _text(export / "b.mp4.yaml", "name: Case 9\ntemplate:\n  2: seen\nshare:\n  users: [alice]\n")
    _text(export / "c.part", "x")
    config = _config(tmp_path, server.url, watch={"settle": "0.3s", "check_container": True})
    planned = {
        item["record"]["name"]: item["record"]
        for item in json.loads(_plan(config, "--json").stdout)["files"]
        if item["action"] == "upload"
    }
    once = run_cli("run", "-c", str(config), "--once", "--max-wait", "30s")
    assert once.returncode == 0, once.stderr
    held = {record["name"]: record for record in server.snapshot()["records"]}
    assert set(held) == set(planned) == {"room a", "Case 9"}
    for name, record in planned.items():
        assert held[name]["template"] == record["template"]
        assert held[name]["share"] == {
            kind: [item["id"] for item in items] for kind, items in record["share"].items()
        }
