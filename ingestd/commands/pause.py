"""``ingestd pause`` / ``ingestd resume``: the flag in the ledger a running daemon obeys."""

from __future__ import annotations

import argparse

from ingestd.commands.common import load, with_ledger
from ingestd.commands.exits import EXIT_OK


def command(args: argparse.Namespace, paused: bool) -> int:
    config = load(args)
    with_ledger(config, lambda ledger: ledger.set_paused(paused))
    print("paused: no new files are taken" if paused else "resumed: new files are taken")
    return EXIT_OK
