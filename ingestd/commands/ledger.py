"""``ingestd ledger (check | backup | restore | migrate | forget-node NAME | copy)``: see
ledger/backup.py; on a shared ledger (``ledger.url``), ledger/postgres/ (``forget-node``:
ledger/postgres/fleet.py); ``copy --to URL`` moves a SQLite ledger into a shared one
(ledger/postgres/copy.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from ingestd.commands.common import advice_names, load, no_such_node
from ingestd.commands.exits import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from ingestd.config.schema import Config
from ingestd.errors import ConfigError, IngestdError, UsageError
from ingestd.ledger import backup
from ingestd.units import format_duration


def command(args: argparse.Namespace) -> int:
    config = load(args)
    if args.ledger_command == "copy":
        return _copy(config, args.to)
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


def _copy(config: Config, to: str) -> int:
    """``ledger copy --to URL``: this machine's SQLite ledger into a shared one, then moved."""
    from ingestd.config.credentials import ledger_password
    from ingestd.config.ledger_section import check_ledger_url, check_shared_watch
    from ingestd.logs import register_secret

    if config.ledger.shared:
        print(
            "ingestd: `ledger copy` copies the SQLite ledger at ledger.path; this "
            "configuration's ledger is shared already (ledger.url)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from ingestd.ledger.api import copy_to_shared, describe_shared_target

    try:
        url = check_ledger_url(to, "--to")
        describe_shared_target(url, "--to")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    # As a daemon on the shared ledger will need them: a file is stored by its folder's name.
    check_shared_watch(dataclasses.replace(config.ledger, url=url), config.watch)
    password = ledger_password(config.ledger)
    register_secret(password)

    watch = config.watch
    roots = {watch.label(i): str(path) for i, path in enumerate(watch.paths)}
    with advice_names(config):
        copied = asyncio.run(
            copy_to_shared(config.ledger.path, url, password=password, roots=roots)
        )
    outside = (
        f" ({copied.outside} under no watch folder, kept with their paths as they were)"
        if copied.outside
        else ""
    )
    ids = " under new ids" if copied.new_ids else ""
    earlier = " (by an earlier run, stopped before marking it moved)" if copied.earlier else ""
    print(
        f"copied{earlier} {_n(copied.jobs, 'job')} ({copied.live} live){ids}{outside}, "
        f"{_n(copied.deletions, 'queued deletion')} and {_n(copied.orphans, 'suspected orphan')} "
        f"to the shared ledger {copied.where}; the ledger {config.ledger.path} is now marked "
        "moved: set ledger.url to it and remove ledger.path"
    )
    return EXIT_OK


def _n(count: int, thing: str) -> str:
    return f"{count} {thing}" + ("" if count == 1 else "s")
