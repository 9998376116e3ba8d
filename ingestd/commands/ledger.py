"""``ingestd ledger (check | backup | restore)``: see ledger/backup.py."""

from __future__ import annotations

import argparse

from ingestd.commands.common import load
from ingestd.commands.exits import EXIT_OK, EXIT_PROBLEM
from ingestd.ledger import backup


def command(args: argparse.Namespace) -> int:
    config = load(args)
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
