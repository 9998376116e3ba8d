"""The short form of the crash and fault campaign (``make chaos`` runs the long one).

A faulty fake server, a few small files (some written slowly, one changed
mid-upload), the daemon killed once at every failpoint and a few times at
random moments, then one run to the end: every file exactly once on the
server, byte for byte, moved out of the watch folder, nothing left behind.
Then the file-system part (chaos/chaos_fs.py): nine actions on the disk, in
three phases (keep with keep_for, move, delete), the daemon as nobody.
``INGESTD_CHAOS_SEED`` replays another seed.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest

from chaos import chaos_fs
from ingestd.failpoints import FAILPOINTS

DEFAULT_SEED = 20261128


def _campaign() -> ModuleType:
    return importlib.import_module("chaos.campaign")


def campaign_kinds() -> tuple[str, ...]:
    return tuple(chaos_fs.KINDS)


def campaign_states() -> tuple[str, ...]:
    return tuple(chaos_fs.STATES)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One short campaign (kills, then file-system actions) for both tests below."""
    campaign = _campaign()
    seed = int(os.environ.get("INGESTD_CHAOS_SEED", DEFAULT_SEED))
    options = campaign.Options.short(seed)
    options.workdir = tmp_path_factory.mktemp("chaos")
    options.verbose = False
    result = campaign.run_campaign(options)
    print(f"seed {seed}\n{result.table()}")  # shown by pytest when a test fails
    return result


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_campaign_keeps_every_invariant(report: Any) -> None:
    assert [p for p in report.problems if not p.startswith("fs: ")] == []
    assert all(report.kills[name] >= 1 for name in FAILPOINTS), report.kills
    assert report.random_kills >= report.options["random_kills"]
    assert set(report.records_per_file.values()) == {1}
    assert report.records == report.files
    assert report.partial_or_orphan == 0
    assert report.bytes_differ == 0
    assert report.not_done == 0
    assert report.moved_ok == report.files
    assert report.deleted_records >= 1  # after_delete_response had a partial record to delete
    assert sum(report.faults.values()) > 0
    assert 1.0 <= report.overhead < 3.0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_file_system_actions_break_no_promise(report: Any) -> None:
    """Swaps, truncations, garbage sidecars, locked folders: the three promises hold.

    A symlink, FIFO or folder swapped in is left in place and never done; nothing
    private is sent; no version never uploaded is lost or moved away; the daemon
    never exits and a canary is uploaded in every phase.
    """
    fs = report.fs
    print(f"seed {report.seed}: {fs.workdir}")
    planned = [*fs.actions, *fs.missed]  # an action misses its moment when intake stops
    assert {label.split("@")[0] for label in planned} == set(campaign_kinds()), planned
    assert {label.split("@")[1] for label in planned} == set(campaign_states()), planned
    assert sum(fs.actions.values()) >= 5, fs.missed
    assert fs.private_bytes == 0
    assert fs.private_shown == {}
    assert fs.lost + fs.moved_unuploaded == 0
    assert fs.stops == 0
    assert fs.replacements_ok == fs.replacements
    assert fs.stale_files == 0
    assert fs.foreign_records == 0
    assert [p for p in report.problems if p.startswith("fs: ")] == []
