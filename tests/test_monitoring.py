"""monitoring/: the alert rules pass ``promtool check rules``, and every metric they and the
Grafana dashboard name is in a live ``/metrics``; counters exist at 0 from the start, and
the last upload's time survives a restart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    REPO,
    KiB,
    free_port,
    health,
    ledger_rows,
    random_file,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)

from ingestd import __version__
from ingestd.fake_valt import FakeValtThread

MONITORING = REPO / "monitoring"
RULES = MONITORING / "ingestd-alerts.yaml"
RULE_TESTS = MONITORING / "ingestd-alerts.test.yaml"
DASHBOARD = MONITORING / "ingestd-dashboard.json"
PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus package
# What the rules cover (issue: server unreachable, login refused, folder problem, backlog
# age, failures, ledger unwritable, watchdog), by the metric each one watches.
COVERED = {
    "ingestd_server_up",
    "ingestd_login_ok",
    "ingestd_watch_folder_state",
    "ingestd_oldest_waiting_age_seconds",
    "ingestd_uploads_failed_total",
    "ingestd_ledger_writable",
    "ingestd_heartbeat_timestamp_seconds",
}
_NAME = re.compile(r"\bingestd_[a-z0-9_]+")


def _expressions() -> dict[str, list[str]]:
    """Every PromQL expression of the rules and of the dashboard (panels, variables)."""
    rules = yaml.safe_load(RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    variables = [var["definition"] for var in board["templating"]["list"] if var["type"] == "query"]
    return {"rules": exprs, "dashboard": panels + variables}


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample in a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def _names(samples: dict[str, float]) -> set[str]:
    return {key.split("{", 1)[0] for key in samples}


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return _samples(answer.read().decode())


def _daemon(tmp_path: Path, url: str, port: int, name: str) -> Any:
    config = write_config(tmp_path, url, status={"listen": f"127.0.0.1:{port}"})
    daemon = start_daemon(config, tmp_path / f"{name}.log")
    health(port, wait=30)  # listening
    # The folders' states come from the health look, which runs right after start-up.
    wait_for(lambda: "ingestd_watch_folder_state" in _names(_scrape(port)), timeout=10)
    return daemon


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(PROMTOOL) is None:  # a skipped test is not a pass: say what to install
        pytest.fail("promtool is not installed: run `make prometheus` (apt-get install prometheus)")
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    return done


def test_the_alert_rules_pass_promtool_and_cover_each_condition() -> None:
    _promtool("check", "rules", str(RULES))
    watched = {name for expr in _expressions()["rules"] for name in _NAME.findall(expr)}
    assert watched >= COVERED, COVERED - watched
    rules = yaml.safe_load(RULES.read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        assert rule["annotations"]["summary"] and rule["labels"]["severity"], rule["alert"]


def test_the_alert_rules_fire_on_the_series_a_daemon_exports() -> None:
    """monitoring/ingestd-alerts.test.yaml: quiet when healthy; each condition raises its
    alert after its ``for``, with the summary an operator reads."""
    _promtool("test", "rules", str(RULE_TESTS))
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert {
        "IngestdServerUnreachable",
        "IngestdLoginRefused",
        "IngestdWatchFolderProblem",
        "IngestdStalled",
        "IngestdFailuresRising",
        "IngestdLedgerUnwritable",
    } <= tested


def test_the_dashboard_is_importable_with_the_datasource_as_a_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert board["uid"] and board["title"] and board["panels"]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert {panel["id"] for panel in board["panels"]} == set(
        range(1, len(board["panels"]) + 1)
    )  # unique ids, as Grafana wants them


def test_every_metric_the_dashboard_and_rules_name_is_served_live(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    daemon = _daemon(tmp_path, server.url, port, "daemon")
    try:
        served = _names(_scrape(port))
    finally:
        assert stop_process(daemon) == 0
    for where, exprs in _expressions().items():
        named = {name for expr in exprs for name in _NAME.findall(expr)}
        assert named, where
        assert named <= served, f"{where} names metrics /metrics lacks: {named - served}"
    rules = " ".join(_expressions()["rules"])
    # The only series not ingestd's own: Prometheus' `up` of the scrape job.
    assert set(re.findall(r"\b([a-z_]+)\{", rules)) - {n for n in served} <= {"up"}


def test_counters_are_zero_before_anything_happens(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    port = free_port()
    daemon = _daemon(tmp_path, server.url, port, "daemon")
    try:
        samples = _scrape(port)
    finally:
        assert stop_process(daemon) == 0
    counters = {key: value for key, value in samples.items() if "_total" in key}
    for key in (
        "ingestd_uploads_failed_total",
        "ingestd_retries_total",
        "ingestd_alerts_sent_total",
        "ingestd_alerts_failed_total",
    ):
        assert any(name.startswith(key + "{") for name in counters), f"{key} has no series yet"
    assert counters["ingestd_bytes_uploaded_total"] == 0
    assert counters['ingestd_uploads_failed_total{reason="source_missing"}'] == 0
    assert counters['ingestd_retries_total{cause="connection"}'] == 0
    assert counters['ingestd_alerts_sent_total{event="job.failed"}'] == 0
    assert set(counters.values()) == {0.0}
    assert samples[f'ingestd_build_info{{version="{__version__}"}}'] == 1
    assert samples["ingestd_login_ok"] == 1
    assert samples["ingestd_paused"] == 0
    assert samples["ingestd_ledger_writable"] == 1
    assert samples["ingestd_server_up"] == 1
    assert samples["ingestd_last_upload_timestamp_seconds"] == 0
    assert abs(samples["ingestd_heartbeat_timestamp_seconds"] - time.time()) < 10


def test_the_last_upload_time_survives_a_restart(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "clip.mp4", 100 * KiB)
    port = free_port()
    daemon = _daemon(tmp_path, server.url, port, "first")
    try:
        wait_for(lambda: [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done"])
        before = _scrape(port)["ingestd_last_upload_timestamp_seconds"]
    finally:
        assert stop_process(daemon) == 0
    assert before > time.time() - 120
    daemon = _daemon(tmp_path, server.url, port, "second")
    try:
        after = _scrape(port)
    finally:
        assert stop_process(daemon) == 0
    assert after["ingestd_uploads_completed_total"] == 0  # nothing was uploaded again
    assert after["ingestd_last_upload_timestamp_seconds"] == pytest.approx(before, abs=1)
