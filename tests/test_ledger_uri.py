"""A ledger path with ``?``, ``#`` or ``%`` in it: the read-only commands open it by URI."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import random_file, run_cli, run_once, write_config

from ingestd.fake_valt import FakeValtThread


def test_a_ledger_path_with_uri_characters_works_for_run_status_and_export(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    ledger = tmp_path / "state ?x=1#frag %41%" / "ledger?mode=rw#1%20.db"
    random_file(export / "clip.mp4", 1000)
    config = write_config(
        tmp_path, server.url, watch={"settle": "0.1s"}, ledger={"path": str(ledger)}
    )
    assert run_once(config, "10s").returncode == 0
    assert ledger.is_file()
    status = run_cli("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["ledger"] == str(ledger) and shown["counts"]["done"] == 1
    audit = run_cli("export", "-c", str(config))
    assert audit.returncode == 0, audit.stderr
    [header, row] = audit.stdout.splitlines()
    assert header.startswith("file,") and row.startswith(str(export / "clip.mp4"))
