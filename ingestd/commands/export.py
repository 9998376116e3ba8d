"""``ingestd export``: the CSV audit of what was uploaded, for records departments.

One row per done job: the file, its size and sha256 (of the whole file, as
sent), the Valt record id and when the server confirmed it.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable

from ingestd.ledger.model import Job

COLUMNS = ("file", "size", "sha256", "record_id", "uploaded_at", "record_name")


def parse_since(text: str) -> float:
    """``2026-11-28`` (local midnight) or a full ISO time, as epoch seconds."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: must be a date like 2026-11-28 (got {text!r})") from None
    return moment.timestamp()


def audit_csv(jobs: Iterable[Job], since: float | None = None) -> str:
    """The audit rows of the done jobs in ``jobs`` (confirmed at or after ``since``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for job in jobs:
        if job.done_at is None or (since is not None and job.done_at < since):
            continue
        uploaded = dt.datetime.fromtimestamp(job.done_at, dt.UTC).isoformat(timespec="seconds")
        writer.writerow(
            (job.path, job.size, job.sha256, job.record_id, uploaded, job.record_name or "")
        )
    return out.getvalue()
