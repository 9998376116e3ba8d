"""``ingestd status``: the daemon and what the ledger holds, for a person or (``--json``) a
program.

Reads the ledger read-only, so it is safe while the daemon writes it (WAL), and the lock
file without locking it. Whether a daemon runs, since when, and its health come from the
heartbeat it writes to the ledger (observe/heartbeat.py). Each job list holds
:data:`LIST_LIMIT` jobs and says how many more there are, unless ``--all``.
Never shows a token or URL: the ledger holds neither.

On a shared ledger (``ledger.url``) it shows every node instead, each by its row in
the ledger (``ledger/postgres/fleet.py``): running, stopped, or gone; ``daemon`` is
this configuration's node, and the counts and job lists are the fleet's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from ingestd.commands.common import advice_names, load
from ingestd.commands.exits import EXIT_OK
from ingestd.commands.status_text import render_status
from ingestd.ledger.api import Fleet, JobLedger, fleet_of, open_ledger
from ingestd.ledger.lock import lock_holder
from ingestd.ledger.model import NODE_RUNNING, Job, NodeView, State
from ingestd.ledger.moved import MOVED_AT, MOVED_TO, MOVING_TO, moved_marker
from ingestd.observe.heartbeat import DaemonState, daemon_state

ACTIVE = (State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING)
LIST_LIMIT = 20


def _job_summary(job: Job, now: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "job": job.id,
        "path": job.path,
        "state": job.state.value,
        "size": job.size,
        "attempts": job.attempts,
    }
    if job.record_id:
        summary["record_id"] = job.record_id
    if job.state == State.UPLOADING and job.size:
        summary["percent"] = round(100 * job.bytes_acked / job.size, 1)
        summary.update(_rate_and_eta(job, now))
    if job.state == State.WAITING:
        summary["why"] = job.wait_reason or "settling"
        summary["waiting_s"] = round(now - job.discovered_at)
    if job.state == State.FAILED:
        summary["reason"] = job.fail_reason
        summary["detail"] = job.fail_detail
        summary["retry"] = f"ingestd retry {job.id}"
    elif job.fail_detail:  # a retry's cause, kept while the job backs off
        summary["last_error"] = job.fail_detail
    if job.state in ACTIVE and job.next_attempt_at > now:
        summary["next_try_s"] = round(job.next_attempt_at - now)
    return summary


def _rate_and_eta(job: Job, now: float) -> dict[str, Any]:
    """Average rate since the upload began, and the time left at that rate."""
    elapsed = now - (job.upload_started_at or now)
    if elapsed <= 0 or job.bytes_acked <= 0:
        return {}
    rate = job.bytes_acked / elapsed
    return {"rate_bps": round(rate), "eta_s": round((job.size - job.bytes_acked) / rate)}


def _daemon(found: DaemonState, now: float) -> dict[str, Any]:
    """The daemon as ``--json`` shows it; its health as of its last heartbeat."""
    beat = found.beat
    shown: dict[str, Any] = {"state": found.state, "running": found.running, "pid": found.pid}
    if beat is None:
        return {**shown, "heartbeat_at": None}
    return {
        **shown,
        "mode": beat.mode,
        "started_at": beat.started_at,
        "uptime_s": round(now - beat.started_at) if found.running else None,
        "heartbeat_at": beat.beat_at,
        "heartbeat_age_s": None if found.beat_age is None else round(found.beat_age, 1),
        "stopped_at": beat.stopped_at,
        "problems": list(beat.problems),
        "server": {"state": beat.server, "detail": beat.server_detail},
        "folders": dict(beat.folders),
    }


def _node(view: NodeView, now: float) -> dict[str, Any]:
    """A node of a shared ledger as ``--json`` shows it; its health as of its last heartbeat
    (its age by the database's clock)."""
    beat = view.heartbeat
    return {
        "name": view.name,
        "host": view.host,
        "pid": view.pid,
        "version": view.version,
        "state": view.state,
        "paused": view.paused,
        "started_at": view.started_at,
        "heartbeat_at": view.seen_at,
        "heartbeat_age_s": round(view.silent_s, 1),
        "stopped_at": view.stopped_at,
        "problems": [] if beat is None else list(beat.problems),
        "server": None if beat is None else {"state": beat.server, "detail": beat.server_detail},
        "folders": {} if beat is None else dict(beat.folders),
        "active": [_job_summary(job, now) for job in view.active],
        "more_active": view.active_count - len(view.active),
    }


def _this_node(views: list[NodeView], name: str | None) -> DaemonState:
    """``daemon`` on a shared ledger: this configuration's node, as its row tells."""
    for view in views:
        if view.name == name:
            state = "running" if view.state == NODE_RUNNING else "not running"
            return DaemonState(state, view.pid, view.heartbeat, view.silent_s)
    return DaemonState("not running", None, None, None)


async def _fleet(fleet: Fleet, node: str | None, limit: int | None, now: float) -> dict[str, Any]:
    """What a shared ledger adds: every node; the fleet's pause; this node as ``daemon``."""
    views = await fleet.nodes(limit)
    return {
        "daemon": _daemon(_this_node(views, node), now),
        "paused": await fleet.fleet_paused(),
        "nodes": [_node(view, now) for view in views],
    }


async def _moved(ledger: JobLedger) -> dict[str, Any] | None:
    """Where ``ingestd ledger copy`` moved this ledger (``finished``: false while a copy
    that did not finish keeps daemons off it); None: it was not moved."""
    meta = {key: await ledger.get_meta(key) or "" for key in (MOVED_TO, MOVED_AT, MOVING_TO)}
    found = moved_marker(meta)
    if found is not None:
        return {"to": found[0], "at": found[1], "finished": True}
    return {"to": meta[MOVING_TO], "at": None, "finished": False} if meta[MOVING_TO] else None


async def gather_status(
    ledger: JobLedger, *, limit: int | None = LIST_LIMIT, holder: int | None = None
) -> dict[str, Any]:
    """The daemon (``holder``: the pid the lock file names), counts per state, active,
    failed and waiting jobs (at most ``limit`` each; None: all), the oldest waiting file;
    on a shared ledger every node too (``nodes``)."""
    now = time.time()
    counts = await ledger.counts()
    active = await ledger.jobs_in(ACTIVE, order="mtime_ns", limit=limit)
    failed = await ledger.jobs_in(
        [State.FAILED], order="updated_at", newest_first=True, limit=limit
    )
    waiting = await ledger.jobs_in([State.WAITING], order="discovered_at", limit=limit)
    oldest = waiting[0] if waiting else None
    problem = await ledger.server_problem()
    orphans = await ledger.suspected_orphans()
    moved = await _moved(ledger)
    totals = {
        "active": sum(counts.get(state.value, 0) for state in ACTIVE),
        "failed": counts.get(State.FAILED.value, 0),
        "waiting": counts.get(State.WAITING.value, 0),
    }
    shown = {"active": len(active), "failed": len(failed), "waiting": len(waiting)}
    status = {
        "ledger": ledger.where,
        "moved": moved,
        "daemon": _daemon(daemon_state(holder, await ledger.heartbeat(), now), now),
        "paused": await ledger.is_paused(),
        "counts": counts,
        "active": [_job_summary(job, now) for job in active],
        "failed": [_job_summary(job, now) for job in failed],
        "waiting": [_job_summary(job, now) for job in waiting],
        "more": {group: max(0, totals[group] - shown[group]) for group in totals},
        "oldest_waiting": None
        if oldest is None
        else {"path": oldest.path, "age_s": round(now - oldest.discovered_at)},
        "pending_deletions": await ledger.pending_deletions(),
        "suspected_orphans": orphans if limit is None else orphans[:limit],
        "more_orphans": 0 if limit is None else max(0, len(orphans) - limit),
        "server_problem": None if problem is None else {"problem": problem[0], "since": problem[1]},
        "folders": await ledger.folder_states(),
    }
    fleet = fleet_of(ledger)
    if fleet is not None:
        status.update(await _fleet(fleet, ledger.node, limit, now))
    return status


def command(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.ledger.path
    if not config.ledger.shared and not path.exists():
        print(f"no ledger yet at {path}: the daemon has not run")
        return EXIT_OK
    limit = None if args.all else LIST_LIMIT

    async def read() -> dict[str, object]:
        ledger = await open_ledger(config, readonly=True)
        holder = None if config.ledger.shared else lock_holder(path)
        try:
            return await gather_status(ledger, limit=limit, holder=holder)
        finally:
            await ledger.close()

    with advice_names(config):
        status = asyncio.run(read())
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return EXIT_OK
