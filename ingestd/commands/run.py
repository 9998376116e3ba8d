"""``ingestd run [--once]``: the daemon, or one pass over what is there now."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from ingestd.commands.common import advice_names, load
from ingestd.config.credentials import resolve_password, resolve_status_token
from ingestd.daemon.lifecycle import Daemon
from ingestd.failpoints import load_failpoints
from ingestd.ledger.lock import LedgerLock
from ingestd.ledger.model import Job, State
from ingestd.logs import configure_logging, register_secret
from ingestd.units import parse_duration


def command(args: argparse.Namespace) -> int:
    config = load(args)
    password = resolve_password(config.valt, os.environ)
    register_secret(password)
    status_token = resolve_status_token(config.status, os.environ)
    register_secret(status_token)
    max_wait = parse_duration(args.max_wait, "--max-wait")
    load_failpoints()
    configure_logging(
        fmt=config.log.format,
        level=config.log.level,
        redact_paths=config.log.redact_paths,
        watch_roots=config.watch.paths,
    )
    daemon = Daemon(
        config,
        password,
        once=args.once,
        max_wait=max_wait,
        show_progress=sys.stderr.isatty(),
        status_token=status_token,
    )
    # One daemon per ledger; the kernel drops the lock however the process ends.
    # A shared ledger's lock is its node's, taken in PostgreSQL (ledger/postgres/store.py).
    lock = contextlib.nullcontext() if config.ledger.shared else LedgerLock(config.ledger.path)
    with advice_names(config), lock:
        result = asyncio.run(daemon.run())
    if result.exit_code and result.message:
        print(f"ingestd: {result.message}", file=sys.stderr)
    if args.once and result.exit_code:
        for job in result.not_done:
            print(f"not done: {job.path} ({job.state.value}: {_why(job)})", file=sys.stderr)
    return result.exit_code


# A job stopped half-way has no reason of its own: say where it stood.
_UNFINISHED = {
    State.QUEUED: "its upload had not begun",
    State.CREATING: "its record was being created on the server",
    State.UPLOADING: "part of it was sent",
    State.CONFIRMING: "all of it was sent, the server had not confirmed it yet",
}


def _why(job: Job) -> str:
    if job.fail_reason:
        return job.fail_reason + (f": {job.fail_detail}" if job.fail_detail else "")
    if job.wait_reason:
        return job.wait_reason
    where = _UNFINISHED.get(job.state, job.state.value)
    if job.state == State.UPLOADING and job.size:
        where = f"{100 * job.bytes_acked / job.size:.0f}% of it was sent"
    return f"{where}; the next run goes on from there"
