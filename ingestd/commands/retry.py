"""``ingestd retry (JOB... | --failed | --node NAME) [--force]``: re-queue failed jobs.

``--node NAME`` (a shared ledger only) takes the failed jobs that node held last, the
fleet's others stay as they are. Exit 2 when an id is not in the ledger (named), 1 when
nothing was re-queued (or ``--node`` names no node known); each named job that was not
re-queued gets one line giving its state.
"""

from __future__ import annotations

import argparse
import sys

from ingestd.commands.common import load, no_such_node, with_ledger
from ingestd.commands.exits import EXIT_OK, EXIT_PROBLEM
from ingestd.errors import UsageError
from ingestd.ledger.api import JobLedger, fleet_of
from ingestd.ledger.model import Job, State


def _left_alone(job: Job, force: bool) -> str:
    """Why a named job was not re-queued, from its state."""
    if job.state == State.DONE:
        return f"job {job.id} ({job.path}) is done: there is nothing to retry"
    if job.state in (State.WAITING, State.SKIPPED) and not force:
        why = job.wait_reason or job.fail_reason or job.state.value
        return (
            f"job {job.id} ({job.path}) is {job.state.value} ({why}), not failed: "
            "`--force` uploads it without the finished checks"
        )
    return f"job {job.id} ({job.path}) is {job.state.value}, not failed: it needs no retry"


async def _last_held_by(ledger: JobLedger, node: str) -> list[int]:
    """``--node``: the failed jobs ``node`` held last."""
    fleet = fleet_of(ledger)
    assert fleet is not None
    if not await fleet.node_known(node):
        raise no_such_node(node)
    return await fleet.failed_last_held_by(node)


def command(args: argparse.Namespace) -> int:
    node: str | None = args.node
    if not args.jobs and not args.failed and node is None:
        raise UsageError("retry needs job ids, --failed or --node (see `ingestd status`)")
    if args.jobs and node is not None:
        raise UsageError("retry takes job ids or --node, not both")
    config = load(args)
    if node is not None and not config.ledger.shared:
        raise UsageError("`retry --node` is for a shared ledger (ledger.url); use --failed")
    ids = None if args.failed and not args.jobs else list(args.jobs)

    async def go(ledger: JobLedger) -> tuple[list[int], list[Job]]:
        if node is not None:
            held = await _last_held_by(ledger, node)
            return (await ledger.retry(held, force=args.force) if held else []), []
        named = [] if ids is None else [await ledger.find_job(job_id) for job_id in ids]
        unknown = [job_id for job_id, job in zip(ids or [], named, strict=True) if job is None]
        if unknown:
            listed = ", ".join(map(str, unknown))
            noun = "job" if len(unknown) == 1 else "jobs"
            raise UsageError(f"no {noun} {listed} in the ledger (`ingestd status` lists them)")
        retried = await ledger.retry(ids, force=args.force)
        return retried, [job for job in named if job is not None and job.id not in retried]

    retried, left = with_ledger(config, go)
    for job in left:
        print(_left_alone(job, args.force), file=sys.stderr)
    if not retried:
        if node is not None:
            why = f": no failed job was last held by node {node}"
        else:
            why = "" if ids else ": no job is failed"
        print("nothing was re-queued" + why, file=sys.stderr)
        return EXIT_PROBLEM
    print(f"re-queued {len(retried)} job(s): {', '.join(map(str, retried))}")
    return EXIT_OK
