"""``ingestd status``: what the ledger holds, for a person or (``--json``) a program.

Reads the ledger read-only, so it is safe while the daemon writes it (WAL).
Never shows a token or URL: the ledger holds neither.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from ingestd.commands.common import advice_names, load
from ingestd.commands.exits import EXIT_OK
from ingestd.ledger.api import JobLedger, open_ledger
from ingestd.ledger.model import Job, State
from ingestd.units import format_duration, format_size

ACTIVE = (State.QUEUED, State.CREATING, State.UPLOADING, State.CONFIRMING)


def _job_summary(job: Job, now: float) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "job": job.id,
        "path": job.path,
        "state": job.state.value,
        "size": job.size,
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
    if job.attempts:
        summary["attempts"] = job.attempts
    return summary


def _rate_and_eta(job: Job, now: float) -> dict[str, Any]:
    """Average rate since the upload began, and the time left at that rate."""
    elapsed = now - (job.upload_started_at or now)
    if elapsed <= 0 or job.bytes_acked <= 0:
        return {}
    rate = job.bytes_acked / elapsed
    return {"rate_bps": round(rate), "eta_s": round((job.size - job.bytes_acked) / rate)}


async def gather_status(ledger: JobLedger) -> dict[str, Any]:
    """Counts per state, active, failed and waiting jobs, and the oldest waiting file."""
    now = time.time()
    counts = await ledger.counts()
    active = await ledger.jobs_in(ACTIVE, order="mtime_ns")
    failed = await ledger.jobs_in([State.FAILED], order="updated_at", newest_first=True)
    waiting = await ledger.jobs_in([State.WAITING], order="discovered_at")
    oldest = waiting[0] if waiting else None
    problem = await ledger.server_problem()
    return {
        "ledger": str(ledger.path),
        "paused": await ledger.is_paused(),
        "counts": counts,
        "active": [_job_summary(job, now) for job in active],
        "failed": [_job_summary(job, now) for job in failed],
        "waiting": [_job_summary(job, now) for job in waiting],
        "oldest_waiting": None
        if oldest is None
        else {"path": oldest.path, "age_s": round(now - oldest.discovered_at)},
        "pending_deletions": await ledger.pending_deletions(),
        "suspected_orphans": await ledger.suspected_orphans(),
        "server_problem": None if problem is None else {"problem": problem[0], "since": problem[1]},
        "folders": await ledger.folder_states(),
    }


def render_status(status: dict[str, Any]) -> str:
    """The status as a few readable lines."""
    counts = status["counts"]
    lines = [
        f"ledger: {status['ledger']}"
        + ("  (PAUSED: `ingestd resume` to go on)" if status["paused"] else ""),
        "jobs:   " + "  ".join(f"{state} {counts[state]}" for state in counts),
    ]
    for title, key in (("active", "active"), ("failed", "failed"), ("waiting", "waiting")):
        items = status[key]
        if not items:
            continue
        lines.append(f"{title}:")
        for item in items[:50]:
            lines.append("  " + _line(item))
        if len(items) > 50:
            lines.append(f"  ... and {len(items) - 50} more")
    problem = status["server_problem"]
    if problem:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(problem["since"]))
        lines.append(f"SERVER: {problem['problem']} (since {since}); no upload goes on until then")
    folders = status["folders"]
    if folders:
        lines.append("folders:")
        for folder in folders:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(folder["since"]))
            state = folder["state"]  # a problem in capitals, as PAUSED and SERVER are
            shown = state if state == "present" else state.upper()
            lines.append(f"  {folder['folder']:<16} {shown:<10} {folder['path']}  (since {since})")
    oldest = status["oldest_waiting"]
    if oldest:
        lines.append(f"oldest waiting: {oldest['path']} ({format_duration(oldest['age_s'])})")
    if status["pending_deletions"]:
        lines.append(
            f"partial records waiting to be deleted on the server: {status['pending_deletions']}"
        )
    orphans = status["suspected_orphans"]
    if orphans:
        lines.append(
            "records left alone on the server (may be empty leftovers of ours; "
            "check each, delete it there if it is):"
        )
        for orphan in orphans[:50]:
            lines.append(
                f"  {orphan['record_id']}  {orphan['name']!r} (job #{orphan['job_id']}): "
                f"{orphan['why']}"
            )
    return "\n".join(lines)


def _line(item: dict[str, Any]) -> str:
    head = f"#{item['job']} {item['state']:<10} {format_size(item['size']):>10}  {item['path']}"
    if "percent" in item:
        head += f"  {item['percent']}%"
    if "rate_bps" in item:
        head += f" at {format_size(item['rate_bps'])}/s, {format_duration(item['eta_s'])} left"
    if "why" in item:
        head += f"  - {item['why']} (for {format_duration(item['waiting_s'])})"
    if "reason" in item:
        head += f"  - {item['reason']}: {item['detail']}"
    return head


def command(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.ledger.path
    if not path.exists():
        print(f"no ledger yet at {path}: the daemon has not run")
        return EXIT_OK

    async def read() -> dict[str, object]:
        ledger = await open_ledger(path, readonly=True)
        try:
            return await gather_status(ledger)
        finally:
            await ledger.close()

    with advice_names(config):
        status = asyncio.run(read())
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return EXIT_OK
