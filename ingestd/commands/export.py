"""``ingestd export``: the CSV audit of what was uploaded, for records departments.

One row per done job: the file, its size and sha256 (of the whole file, as
sent), the Valt record id and when the server confirmed it, its record name and, on a
shared ledger, the node that held the job last (the one that finished it; empty on a
SQLite ledger). A shared ledger's export is the whole fleet's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import errno
import io
import os
import sys
from collections.abc import Iterable

from ingestd.commands.common import load
from ingestd.commands.exits import EXIT_OK
from ingestd.errors import IngestdError, UsageError
from ingestd.ledger.api import open_ledger
from ingestd.ledger.model import Job, State

COLUMNS = ("file", "size", "sha256", "record_id", "uploaded_at", "record_name", "node")


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
            (
                job.path,
                job.size,
                job.sha256,
                job.record_id,
                uploaded,
                job.record_name or "",
                job.uploaded_by or "",
            )
        )
    return out.getvalue()


def command(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not config.ledger.shared and not config.ledger.path.exists():
        _write(audit_csv([]))
        return EXIT_OK

    async def read() -> str:
        ledger = await open_ledger(config, readonly=True)
        try:
            return audit_csv(await ledger.jobs_in([State.DONE], order="done_at"), since)
        finally:
            await ledger.close()

    _write(asyncio.run(read()))
    return EXIT_OK


def _write(text: str) -> None:
    """The CSV to standard output; a full disk or a closed pipe is one line, not a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        # Python flushes stdout again at exit: point it at /dev/null so that says nothing.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if exc.errno == errno.ENOSPC:
            advice = "the disk is full: free some space, or send the CSV elsewhere"
        else:
            advice = "the file or pipe it goes to refused it"
        raise IngestdError(
            f"export: the CSV could not be written ({exc.strerror or exc}): {advice}"
        ) from None
