"""``ingestd pause`` / ``ingestd resume [--node NAME]``: the flag in the ledger a running
daemon obeys.

Without ``--node`` the flag is the whole ledger's: on a shared ledger every node obeys it.
``--node NAME`` (a shared ledger only) pauses or resumes that node alone; a node takes no
new files while either flag is set (``is_paused``).
"""

from __future__ import annotations

import argparse

from ingestd.commands.common import load, no_such_node, with_ledger
from ingestd.commands.exits import EXIT_OK
from ingestd.errors import UsageError
from ingestd.ledger.api import JobLedger, fleet_of


def command(args: argparse.Namespace, paused: bool) -> int:
    config = load(args)
    verb = "pause" if paused else "resume"
    node: str | None = args.node
    if node is not None and not config.ledger.shared:
        raise UsageError(
            f"`{verb} --node` is for a shared ledger (ledger.url): a SQLite ledger has one "
            f"daemon, which `ingestd {verb}` {verb}s"
        )

    async def go(ledger: JobLedger) -> list[str]:
        """Sets the flag; returns what the reader should know besides."""
        fleet = fleet_of(ledger)
        if node is None:
            await ledger.set_paused(paused)
            if fleet is None or paused:
                return []
            held = [view.name for view in await fleet.nodes(limit=0) if view.paused]
            return [f"node {name} stays paused: `ingestd resume --node {name}`" for name in held]
        assert fleet is not None
        if not await fleet.set_node_paused(node, paused):
            raise no_such_node(node)
        if not paused and await fleet.fleet_paused():
            return ["every node is paused still: `ingestd resume` lets them all go on"]
        return []

    notes = with_ledger(config, go)
    if node is not None:
        print(
            f"node {node} paused: it takes no new files (the other nodes go on)"
            if paused
            else f"node {node} resumed: it takes new files"
        )
    else:
        print("paused: no new files are taken" if paused else "resumed: new files are taken")
    for note in notes:
        print(note)
    return EXIT_OK
