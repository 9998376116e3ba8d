"""``ingestd ledger (check | backup | restore | migrate | forget-node NAME)``: see
ledger/backup.py; on a shared ledger (``ledger.url``), ledger/postgres/ (``forget-node``:
ledger/postgres/fleet.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ingestd.commands.common import advice_names, load, no_such_node
from ingestd.commands.exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from ingestd.config.schema import Config
from ingestd.errors import IngestdError
from ingestd.ledger import backup
from ingestd.units import format_duration


def command(args: argparse.Namespace) -> int:
    config = load(args)
    if config.ledger.shared:
        return _shared(config, args)
    if args.ledger_command == "migrate":
        print(
            "ingestd: `ledger migrate` is for a shared ledger (ledger.url); a SQLite ledger is "
            "migrated by the daemon's start",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.ledger_command == "forget-node":
        print(
            "ingestd: `ledger forget-node` is for a shared ledger (ledger.url): a SQLite "
            "ledger has one daemon and no list of nodes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = config.ledger.path
    if args.ledger_command == "check":
        report = backup.check_ledger(path)
        print("\n".join(report.lines()))
        if not report.ok:
            print(f"to recover: `ingestd ledger restore -c {config.source}` (the daemon stopped)")
        return EXIT_OK if report.ok else EXIT_PROBLEM
    if args.ledger_command == "backup":
        made = backup.make_backup(path, config.ledger.backups)
        print(f"backup written: {made} (the newest {config.ledger.backups} are kept)")
        return EXIT_OK
    done = backup.restore(path, force=args.force)
    for skipped, problem in done.skipped:
        print(f"skipped {skipped.name}: fails integrity_check ({problem})")
    taken = backup.backup_stamp(done.backup_taken_at)
    print(f"restored {path} from {done.restored_from.name} (taken {taken} UTC)")
    if done.kept_aside is not None:
        print(f"the previous ledger is kept as {done.kept_aside}")
    print(
        "the next start checks every file not done in this backup against the server "
        "before uploading it"
    )
    return EXIT_OK


def _shared(config: Config, args: argparse.Namespace) -> int:
    """The ledger actions on a shared ledger: its backups are PostgreSQL's."""
    action: str = args.ledger_command
    if action in ("backup", "restore"):
        print(
            f"ingestd: a shared ledger's {action}s are PostgreSQL's: use pg_dump / pg_restore "
            "or the site's own backups of the database (ledger.url)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if action == "forget-node":
        return _forget_node(config, args.name)
    from ingestd.ledger.api import open_ledger

    async def go() -> tuple[str, dict[str, int]]:
        ledger = await open_ledger(config, migrate=action == "migrate")
        try:
            return ledger.where, await ledger.counts()
        finally:
            await ledger.close()

    with advice_names(config):
        where, counts = asyncio.run(go())
    from ingestd.ledger.schema import SCHEMA_VERSION

    verb = "is at" if action == "check" else "migrated to"
    print(f"shared ledger {where} {verb} schema version {SCHEMA_VERSION}")
    print("jobs: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    return EXIT_OK


def _forget_node(config: Config, name: str) -> int:
    """Drop a gone node from the list, giving its claims back; refuse a live one (exit 1)."""
    from ingestd.ledger.api import fleet_of, open_ledger
    from ingestd.ledger.model import NodeForgotten, gone_after

    async def go() -> NodeForgotten:
        ledger = await open_ledger(config)
        try:
            fleet = fleet_of(ledger)
            assert fleet is not None
            return await fleet.forget_node(name)
        finally:
            await ledger.close()

    with advice_names(config):
        done = asyncio.run(go())
    silent = format_duration(done.silent_s)
    if not done.found:
        raise no_such_node(name)
    if done.live:
        wait = format_duration(gone_after(config.ledger.lease))
        why = f"its last heartbeat {silent} ago"
        if done.live_claims:
            why += f", yet it renewed {done.live_claims} claim(s) within ledger.lease"
        raise IngestdError(
            f"node {name} is live ({why}): stop it first; it can be forgotten once silent "
            f"for {wait} (twice ledger.lease)"
        )
    print(
        f"forgot node {name} (silent for {silent}); {done.released} claim(s) it held "
        "given back: other nodes take those jobs now"
    )
    return EXIT_OK
