"""A server outage is not the file's fault: server work waits, no attempt counts.

A failure counts toward ``upload.max_attempts`` only while the server answers
others (a probe); when it answers nothing, every job keeps its state, one probe
at a time goes out with capped backoff, and ``/healthz``, ``/metrics``,
``ingestd status`` and an alert say since when the server is unreachable.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import (
    KiB,
    free_port,
    health,
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_alerts import Receiver
from test_health import _get, _metric, _unhealthy_with

from ingestd.fake_valt import FakeValtThread
from ingestd.valt import rules as valt_rules

MAX_ATTEMPTS = 2
BACKOFF_MAX = 0.2  # s: MAX_ATTEMPTS x BACKOFF_MAX is far less than the outage lasts
OUTAGE = 4.0  # s


@pytest.fixture
def receiver() -> Receiver:  # type: ignore[misc]
    with Receiver() as hook:
        yield hook


def _rows(tmp_path: Path) -> list[dict[str, object]]:
    return ledger_rows(tmp_path / "ledger.db")


def test_an_outage_longer_than_the_attempts_allow_fails_no_file(
    tmp_path: Path, server: FakeValtThread, export: Path, receiver: Receiver
) -> None:
    for n in range(3):
        random_file(export / f"clip{n}.mp4", 300 * KiB, seed=n)
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        upload={"max_attempts": MAX_ATTEMPTS, "backoff_initial": "0.05s", "backoff_max": "0.2s"},
        status={"listen": f"127.0.0.1:{port}"},
        alerts={"webhook": receiver.url},
    )
    server.set_faults(fail_rate=1.0)  # every request 500, the probe's included
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        body = _unhealthy_with(port, "the Valt server is unreachable since ")
        went_down = time.monotonic()
        assert wait_for(lambda: len(_rows(tmp_path)) == 3)
        time.sleep(OUTAGE)
        metrics = _get(port, "/metrics")[1]
        assert _metric(metrics, "ingestd_server_up") == 0
        assert _metric(metrics, "ingestd_server_unreachable_since_timestamp_seconds") > 0
        status = run_cli("status", "-c", str(config))
        assert "SERVER: the Valt server is unreachable since " in status.stdout, status.stdout
        rows = _rows(tmp_path)
        assert [r["attempts"] for r in rows] == [0, 0, 0]
        assert all(r["state"] != "failed" for r in rows)
        # Nothing is put off past the outage: each job is due the moment it ends.
        assert all(float(r["next_attempt_at"] or 0) <= time.time() for r in rows), rows
        assert health(port)[0] == 503
        probes_during = server.call(lambda fake: fake.faults_injected.get("fail", 0))

        server.set_faults(fail_rate=0.0)
        came_back = time.monotonic()
        wait_for(lambda: [r["state"] for r in _rows(tmp_path)] == ["done"] * 3, timeout=30)
        recovered_s = time.monotonic() - came_back
        wait_for(lambda: health(port)[0] == 200, timeout=10)
        assert _metric(_get(port, "/metrics")[1], "ingestd_server_up") == 1
        wait_for(lambda: receiver.messages("server.reachable"), timeout=10)
    finally:
        assert stop_process(daemon) == 0
    rows = _rows(tmp_path)
    assert [r["attempts"] for r in rows] == [0, 0, 0]
    assert all(r["fail_reason"] is None for r in rows)
    events = log_events(log)
    assert not [e for e in events if e["event"] in ("upload.retry", "job.failed")]
    assert len([e for e in events if e["event"] == "server.unreachable"]) == 1
    [down] = receiver.messages("server.unreachable")
    assert down["summary"].startswith("the Valt server is unreachable since ")
    assert any("unreachable since" in p for p in body["problems"])
    # One probe at a time with capped backoff: about one per BACKOFF_MAX, not a storm.
    assert probes_during <= (time.monotonic() - went_down) / BACKOFF_MAX + 10
    assert recovered_s < 10
    print(f"outage {OUTAGE} s, {probes_during} failed requests, done {recovered_s:.1f} s after")


def test_one_files_repeated_failure_while_the_server_answers_others_fails_it(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    random_file(export / "bad.mp4", 100 * KiB, seed=1)
    random_file(export / "good.mp4", 100 * KiB, seed=2)
    server.set_faults(fail_names=["bad"])  # create-upload of bad.mp4's record: 500
    config = write_config(
        tmp_path,
        server.url,
        watch={"settle": "0.1s"},
        upload={"max_attempts": MAX_ATTEMPTS, "backoff_initial": "0.05s", "backoff_max": "0.2s"},
    )
    result = run_cli("run", "-c", str(config), "--once", "--max-wait", "10s")
    assert result.returncode == 1, result.stderr
    states = {Path(str(r["path"])).name: r for r in _rows(tmp_path)}
    assert states["good.mp4"]["state"] == "done"
    bad = states["bad.mp4"]
    assert bad["state"] == "failed" and bad["attempts"] == MAX_ATTEMPTS - 1
    assert f"gave up after {MAX_ATTEMPTS} attempts" in str(bad["fail_detail"])


def test_the_probes_verdicts() -> None:
    down, up = valt_rules.means_server_down, valt_rules.probe_says_up
    assert down(None, "connection") and down(None, "timeout") and down(None, "tls")
    assert down(500, "http_500") and down(502, "http_502") and down(503, "")
    assert not down(429, "http_429") and not down(408, "http_408") and not down(404, "")
    assert not down(None, "bad_answer")  # an answer that was not what we asked for
    assert up(200) and up(204) and up(401) and up(403) and up(404) and up(307)
    assert not up(None) and not up(500) and not up(502) and not up(504)


async def test_an_admin_403_on_the_probe_is_the_server_up_and_no_login(
    server: FakeValtThread,
) -> None:
    from conftest import PASSWORD, USERNAME

    from ingestd.errors import RetryableError, ServerUnreachable
    from ingestd.valt.client import ValtClient

    server.set_faults(admin_forbidden=True, fail_calls=["POST /api/v3/records/create-upload"])
    async with ValtClient(
        base_url=server.url, username=USERNAME, password=PASSWORD, outage_retry=(0.05, 0.2)
    ) as client:
        with pytest.raises(RetryableError) as caught:
            await client.create_upload("clip", {}, {})
        assert not isinstance(caught.value, ServerUnreachable)  # the file's failure: counts
        assert client.outage.since is None and client.logins == 1
        server.set_faults(admin_forbidden=False, fail_calls=[], fail_rate=1.0)
        with pytest.raises(ServerUnreachable):
            await client.create_upload("clip", {}, {})
        assert client.outage.since is not None and client.logins == 1
