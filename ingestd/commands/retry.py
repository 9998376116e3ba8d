"""``ingestd retry (JOB... | --failed) [--force]``: re-queue failed jobs."""

from __future__ import annotations

import argparse

from ingestd.commands.common import load, with_ledger
from ingestd.commands.exits import EXIT_OK
from ingestd.errors import UsageError


def command(args: argparse.Namespace) -> int:
    if not args.jobs and not args.failed:
        raise UsageError("retry needs job ids or --failed (see `ingestd status`)")
    config = load(args)
    ids = None if args.failed and not args.jobs else list(args.jobs)
    retried = with_ledger(config, lambda ledger: ledger.retry(ids, force=args.force))
    print(
        f"re-queued {len(retried)} job(s)"
        + (f": {', '.join(map(str, retried))}" if retried else "")
    )
    return EXIT_OK
