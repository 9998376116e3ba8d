"""What the status page shows (``GET /status.json``): totals, jobs and health, bounded.

Each list holds at most :data:`LIST_LIMIT` jobs and says how many more there are, so a
page open on a backlog of 100,000 files costs a few small queries. With
``log.redact_paths`` no path, file, folder or record name leaves here: a job is its id,
a folder its place in ``watch.paths``, and free texts (why a file waits, why it failed)
are scrubbed the way log lines are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestd import __version__
from ingestd.ledger.model import Job, State
from ingestd.logs import redact_path_fields, redact_text
from ingestd.observe.view import DaemonView

LIST_LIMIT = 20
IN_FLIGHT = (State.CREATING, State.UPLOADING, State.CONFIRMING)


@dataclass(frozen=True)
class PageInputs:
    """What the health service knows besides the daemon itself."""

    counts: Mapping[str, int]
    problems: Sequence[str]
    watch_paths: Sequence[Path]
    free_bytes: Mapping[int, int]
    min_free: int
    # Each folder's label (its name, else watch.paths[N]) and state (present, missing,
    # unreadable, unmounted), in watch.paths' order; empty before the first look.
    folder_labels: Sequence[str]
    folder_states: Sequence[str]
    ledger_path: Path
    ledger_problems: Sequence[str]
    last_upload_at: float | None
    redact_paths: bool


class _Namer:
    """A job's name and free texts as the page may show them."""

    def __init__(self, roots: Sequence[Path], redact: bool) -> None:
        self.roots = [str(root) for root in roots]
        self.redact = redact

    def job(self, job: Job, **texts: str | None) -> dict[str, Any]:
        """``name`` (relative to its watch root, or ``job N``) and ``texts``, scrubbed."""
        present = {key: redact_text(value) for key, value in texts.items() if value is not None}
        if not self.redact:
            relative = os.path.relpath(job.path, job.root) if job.root else job.path
            return {"name": relative if not relative.startswith("..") else job.path, **present}
        fields: dict[str, Any] = {"path": job.path, **present}
        if job.record_name:
            fields["name"] = job.record_name
        scrubbed = redact_path_fields(fields, self.roots)
        return {"name": f"job {job.id}", **{key: scrubbed[key] for key in present}}


async def gather_page(daemon: DaemonView, inputs: PageInputs) -> dict[str, Any]:
    """The page's whole state, as JSON-able values."""
    now = time.time()
    ledger = daemon.ledger
    namer = _Namer(inputs.watch_paths, inputs.redact_paths)
    counts = {state.value: inputs.counts.get(state.value, 0) for state in State}
    busy = daemon.uploading()
    in_flight = await ledger.jobs_in(IN_FLIGHT, order="upload_started_at", limit=LIST_LIMIT)
    room = LIST_LIMIT - len(in_flight)
    queued = await ledger.jobs_in([State.QUEUED], order="next_attempt_at", limit=room)
    waiting = await ledger.jobs_in([State.WAITING], order="discovered_at", limit=LIST_LIMIT)
    failed = await ledger.jobs_in(
        [State.FAILED], order="updated_at", newest_first=True, limit=LIST_LIMIT
    )
    active_total = sum(counts[state.value] for state in (*IN_FLIGHT, State.QUEUED))
    active = [_active(job, namer, now, job.id in busy) for job in (*in_flight, *queued)]
    return {
        "version": __version__,
        "generated_at": now,
        "mode": "once" if daemon.once else "daemon",
        "paused": daemon.paused,
        "healthy": not inputs.problems,
        "problems": list(inputs.problems),
        "totals": counts,
        "last_upload_at": inputs.last_upload_at,
        "active": _group(active, active_total),
        "waiting": _group([_waiting(job, namer, now) for job in waiting], counts["waiting"]),
        "failed": _group([_failed(job, namer) for job in failed], counts["failed"]),
        "health": health_of(daemon, inputs),
    }


def health_of(daemon: DaemonView, inputs: PageInputs) -> dict[str, Any]:
    """The server's, the ledger's and each folder's health: the page shows it, the
    daemon's heartbeat carries it to ``ingestd status``."""
    return {"server": _server(daemon), "ledger": _ledger(inputs), "folders": _folders(inputs)}


def _group(items: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {"items": items, "more": max(0, total - len(items))}


def _active(job: Job, namer: _Namer, now: float, in_worker: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "job": job.id,
        "state": job.state.value,
        "size": job.size,
        "sent": job.size if job.state == State.CONFIRMING else job.bytes_acked,
        "in_worker": in_worker,
        "attempts": job.attempts,
        **namer.job(job),
    }
    item["percent"] = round(100 * item["sent"] / job.size, 1) if job.size else 100.0
    started = job.upload_started_at
    if job.state == State.UPLOADING and started is not None and job.bytes_acked > 0:
        elapsed = now - started
        if elapsed > 0:
            rate = job.bytes_acked / elapsed
            item["rate_bps"] = round(rate)
            item["eta_s"] = round(max(0, job.size - job.bytes_acked) / rate)
    if job.state == State.QUEUED and job.next_attempt_at > now:
        item["next_try_s"] = round(job.next_attempt_at - now)
    return item


def _waiting(job: Job, namer: _Namer, now: float) -> dict[str, Any]:
    return {
        "job": job.id,
        "size": job.size,
        "waiting_s": round(now - job.discovered_at),
        **namer.job(job, why=job.wait_reason or "settling: the file may still be written"),
    }


def _failed(job: Job, namer: _Namer) -> dict[str, Any]:
    return {
        "job": job.id,
        "size": job.size,
        "attempts": job.attempts,
        "failed_at": job.updated_at,
        "retry": f"ingestd retry {job.id}",
        **namer.job(job, reason=job.fail_reason or "failed", detail=job.fail_detail),
    }


def _server(daemon: DaemonView) -> dict[str, Any]:
    server = daemon.server
    if server.auth_failed:
        return {"state": "refused", "detail": "the server refuses the credentials"}
    if server.redirect is not None:
        return {"state": "redirected", "detail": redact_text(server.redirect)}
    if server.outage.since is not None:
        return {"state": "unreachable", "detail": redact_text(server.outage.describe())}
    if server.last_contact_ok is False:
        return {"state": "unreachable", "detail": "the last request failed"}
    if server.last_contact_ok is None:
        return {"state": "unknown", "detail": "no request sent yet"}
    return {"state": "ok", "detail": "the last request was answered"}


def _ledger(inputs: PageInputs) -> dict[str, Any]:
    found = list(inputs.ledger_problems)
    health: dict[str, Any] = {
        "state": "problem" if found else "ok",
        "detail": "; ".join(found) if found else "writable",
    }
    if not inputs.redact_paths:
        health["path"] = str(inputs.ledger_path)
    return health


def _folders(inputs: PageInputs) -> list[dict[str, Any]]:
    folders = []
    for index, root in enumerate(inputs.watch_paths):
        free = inputs.free_bytes.get(index)
        known = inputs.folder_states[index] if index < len(inputs.folder_states) else None
        if known is not None and known != "present":
            state, detail = known, f"the folder is {known}: files in it wait until it is back"
        elif free is None:
            state, detail = "missing", "cannot be read (missing or not mounted?)"
        elif free < inputs.min_free:
            state, detail = "low_space", "less free space than watch.min_free"
        else:
            state, detail = "ok", "present"
        label = (
            inputs.folder_labels[index]
            if index < len(inputs.folder_labels)
            else f"watch.paths[{index}]"
        )
        folder: dict[str, Any] = {
            "folder": label,
            "state": state,
            "detail": detail,
            "free_bytes": free,
        }
        if not inputs.redact_paths:
            folder["path"] = str(root)
        folders.append(folder)
    return folders
