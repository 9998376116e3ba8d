"""The short form of the power-cut campaign (``make power`` runs the long one).

Three daemons (keep with keep_for, move, delete) on the power-cut file
system, a faulty fake server, a few small recordings arriving (some slowly),
twenty power cuts at random moments, then a run to the end and one more
cut after a clean stop. ``INGESTD_POWER_SEED`` replays another seed.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from powercut import missing
from powercut.campaign import Options, Report, run_campaign

DEFAULT_SEED = 20261201


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    reason = missing()
    if reason:  # a skipped test is not a pass: say what to install
        pytest.fail(f"the power-cut file system cannot run here: {reason}")
    seed = int(os.environ.get("INGESTD_POWER_SEED", DEFAULT_SEED))
    options = Options.short(seed)
    options.workdir = tmp_path_factory.mktemp("power")
    options.verbose = False
    result = run_campaign(options)
    print(f"seed {seed}\n{result.table()}")  # shown by pytest when a test fails
    return result


def _broken(report: Report, *words: str) -> list[str]:
    return [p for p in report.problems if any(w in p for w in words)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_power_cuts_lose_no_recording_and_damage_no_ledger(report: Report) -> None:
    assert report.cuts >= 20
    assert report.finished == report.recordings
    assert sum(report.cuts_per_state.values()) > 0
    assert report.backups_aged > 0
    assert report.cuts_per_state.get("failed", 0) > 0  # the broken sidecars reached failed_to
    assert sum(report.faults.values()) > 0
    figures: dict[str, Any] = {
        "recordings_lost": report.recordings_lost,
        "duplicates": report.duplicates,
        "ledger_damage": report.ledger_damage,
        "truncated_final": report.truncated_final,
        "done_incomplete": report.done_incomplete,
        "partial_records_left": report.partial_records_left,
        "daemon_exits": report.daemon_exits,
    }
    assert figures == dict.fromkeys(figures, 0), report.table()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_power_cuts_undo_no_after_upload_action(report: Report) -> None:
    """Every move, deletion, set-aside and backup rotation the ledger records survives a cut:
    each name change is made durable (its folder fsynced) before the commit that says so."""
    assert report.actions_undone == 0, _broken(report, "by the ledger")
    assert report.failed_not_set_aside == 0
    assert report.rotations_undone == 0
    assert report.problems == []
