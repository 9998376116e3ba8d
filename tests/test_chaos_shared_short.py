"""The short form of the shared-ledger campaign (``make chaos`` runs the long one).

Three daemons on one share and one real PostgreSQL, against the faulty fake server:
12 small files arriving over the run (two of them copies of another file), three node
kills, PostgreSQL killed and started again, one node cut off from PostgreSQL for longer
than its lease while it runs; then every node runs to the end. Each recording once on
the server, byte for byte, the copies skipped, nothing orphaned, nothing left undone,
never two nodes sending chunks of one job at once. ``INGESTD_CHAOS_SEED`` replays
another seed.
"""

from __future__ import annotations

import os

import pytest

from chaos.shared import SharedOptions, run_campaign

DEFAULT_SEED = 20261201


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_shared_campaign_keeps_every_check(tmp_path_factory: pytest.TempPathFactory) -> None:
    seed = int(os.environ.get("INGESTD_CHAOS_SEED", DEFAULT_SEED))
    options = SharedOptions.short(seed)
    options.workdir = tmp_path_factory.mktemp("chaos-shared")
    options.verbose = False
    report = run_campaign(options)
    print(f"seed {seed}\n{report.table()}")  # shown by pytest when the test fails
    missed = [name for name, _found, _expected, holds in report.checks() if not holds]
    assert missed == []
    assert report.problems == []
    assert set(report.records_per_file.values()) == {1}
    assert report.records == report.files - report.copies
    assert report.skipped_copies == report.copies == options.duplicates
    assert report.orphans == report.bytes_differ == report.not_done == 0
    assert report.two_senders == 0
    assert report.moved_ok == report.files - report.copies
    # Every fault came: the kills, PostgreSQL's, and a cut-off longer than the lease.
    assert sum(report.kills.values()) == options.kills
    assert report.pg_kill_at is not None and report.pg_down_s > 0
    assert report.cut_at is not None and report.cut_s > options.lease
    assert sum(report.faults.values()) > 0
