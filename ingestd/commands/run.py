"""``ingestd run [--once]``: the daemon, or one pass over what is there now."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ingestd.commands.common import advice_names, load
from ingestd.config.credentials import resolve_password, resolve_status_token
from ingestd.daemon.lifecycle import Daemon
from ingestd.failpoints import load_failpoints
from ingestd.ledger.lock import LedgerLock
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
    with advice_names(config), LedgerLock(config.ledger.path):
        result = asyncio.run(daemon.run())
    if args.once and result.exit_code:
        if result.message:
            print(f"ingestd: {result.message}", file=sys.stderr)
        for job in result.not_done:
            why = job.fail_reason or job.wait_reason or job.state.value
            detail = f": {job.fail_detail}" if job.fail_detail and job.fail_reason else ""
            print(f"not done: {job.path} ({job.state.value}: {why}{detail})", file=sys.stderr)
    return result.exit_code
