"""``log.redact_paths``: file and folder names can carry people's names; none may leave.

A daemon at ``log.level: debug`` with ``status.listen`` and ``alerts.webhook``
set, over files named after people, in a folder named after a case: one is
uploaded, one fails (a bad sidecar, so an alert goes out), one waits (empty).
No byte of its output, of its alerts, of ``/metrics`` or of ``/healthz``
holds a name, a case number, the folder's path or the watch root; the log
still tells the files apart by ``path_token``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from conftest import (
    KiB,
    free_port,
    ledger_rows,
    log_events,
    random_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_alerts import Receiver
from test_bad_input import age, assert_healthy, wait_alive

from ingestd.fake_valt import FakeValtThread
from ingestd.logs import path_token

PERSONAL = ["Jane", "Doe", "John", "Roe", "Mary", "Major", "Smith", "4711"]


def test_redacted_paths_leave_no_name_in_logs_alerts_or_metrics(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    case = export / "Case 4711 Smith"
    uploaded = case / "Jane Doe interview.mp4"
    broken = case / "John Roe statement.mp4"
    empty = case / "Mary Major.mp4"
    random_file(uploaded, 300 * KiB, seed=1)
    random_file(broken, 100 * KiB, seed=2)
    (case / "John Roe statement.json").write_text("{ this is not JSON, John Roe")
    age(case / "John Roe statement.json", 120)
    empty.touch()
    port = free_port()
    with Receiver() as receiver:
        config = write_config(
            tmp_path,
            server.url,
            log={"level": "debug", "redact_paths": True},
            status={"listen": f"127.0.0.1:{port}"},
            alerts={"webhook": receiver.url},
            record={"name": "{parent} {stem}"},  # the record name carries them too
        )
        log = tmp_path / "daemon.log"
        daemon = start_daemon(config, log)
        try:

            def settled() -> bool:
                rows = {Path(row["path"]).name: row for row in ledger_rows(tmp_path / "ledger.db")}
                return (
                    len(rows) == 3
                    and rows[uploaded.name]["state"] == "done"
                    and rows[broken.name]["state"] == "failed"
                    and rows[empty.name]["wait_reason"] is not None
                )

            wait_alive(daemon, log, settled)
            wait_for(lambda: receiver.messages("job.failed"))
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
                metrics = answer.read().decode()
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=10)
            except urllib.error.HTTPError as unhealthy:  # 503 is fine here: what it says matters
                healthz = unhealthy.read().decode()
                unhealthy.close()
            else:
                with urllib.request.urlopen(f"{base}/healthz", timeout=10) as answer:
                    healthz = answer.read().decode()
            assert_healthy(daemon, log)
        finally:
            assert stop_process(daemon) == 0
        alerts = json.dumps(receiver.messages())

    assert "Case 4711 Smith Jane Doe interview" in {r["name"] for r in server.snapshot()["records"]}
    output = log.read_text()
    assert "ingestd_uploads_completed_total 1.0" in metrics
    for where, text in [
        ("log", output),
        ("alerts", alerts),
        ("metrics", metrics),
        ("healthz", healthz),
    ]:
        for secret in [*PERSONAL, str(case), str(export)]:
            assert secret not in text, (where, secret)
    events = log_events(log)
    assert any(e["event"] == "record.created" for e in events)
    assert any(e["event"] == "job.failed" and e["reason"] == "bad_sidecar" for e in events)
    discovered = {e["path"] for e in events if e["event"] == "file.discovered"}
    assert discovered == {path_token(str(p)) for p in (uploaded, broken, empty)}
    assert any(e["level"] == "debug" for e in events)  # debug really was on


def test_redaction_reaches_free_text_and_tracebacks(tmp_path: Path) -> None:
    """The daemon's lines above hold no traceback; a bug's would quote the path in it."""
    import io
    import logging

    import structlog

    from ingestd.logs import configure_logging, get_logger

    root = tmp_path / "Dr Smith room"
    path = root / "Case 4711" / "Jane Doe.mp4"
    out = io.StringIO()
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    configure_logging(fmt="json", redact_paths=True, watch_roots=[root], stream=out)
    try:
        bound = get_logger("test").bind(job_id=1, path=str(path))
        try:
            open(path)  # noqa: SIM115
        except FileNotFoundError:
            bound.exception("job.internal_error", detail="record 'Case 4711 Jane Doe' refused")
        bound.warning("file.waiting", reason="waiting for marker Jane Doe.mp4.done")
        get_logger("test").info("record.created", name="Case 4711 Jane Doe", record_id="r1")
        logging.getLogger("aiohttp.client").warning("cannot reach %s/x", root)
    finally:
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
        structlog.reset_defaults()
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 4 and "FileNotFoundError" in lines[0]["exception"]
    for secret in ("Jane", "Doe", "Smith", "4711", str(tmp_path)):
        assert secret not in text, secret
    assert lines[0]["path"] == path_token(str(path))
    assert lines[1]["reason"] == f"waiting for marker {path_token(str(path))}.done"
    assert lines[2]["name"].startswith("name:")
    assert lines[3]["event"] == "cannot reach [watch root]/x"
