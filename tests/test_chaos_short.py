"""The short form of the crash and fault campaign (``make chaos`` runs the long one).

A faulty fake server, a few small files (some written slowly, one changed
mid-upload), the daemon killed once at every failpoint and a few times at
random moments, then one run to the end: every file exactly once on the
server, byte for byte, moved out of the watch folder, nothing left behind.
``INGESTD_CHAOS_SEED`` replays another seed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from ingestd.failpoints import FAILPOINTS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 20261128


def _campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_campaign", REPO / "chaos" / "campaign.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_short_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    campaign = _campaign()
    seed = int(os.environ.get("INGESTD_CHAOS_SEED", DEFAULT_SEED))
    options = campaign.Options.short(seed)
    options.workdir = tmp_path / "chaos"
    options.verbose = False
    report = campaign.run_campaign(options)
    print(f"seed {seed}\n{report.table()}")  # shown by pytest when the test fails

    assert report.problems == []
    assert all(report.kills[name] >= 1 for name in FAILPOINTS), report.kills
    assert report.random_kills >= options.random_kills
    assert set(report.records_per_file.values()) == {1}
    assert report.records == report.files
    assert report.partial_or_orphan == 0
    assert report.bytes_differ == 0
    assert report.not_done == 0
    assert report.moved_ok == report.files
    assert report.deleted_records >= 1  # after_delete_response had a partial record to delete
    assert sum(report.faults.values()) > 0
    assert 1.0 <= report.overhead < 3.0
