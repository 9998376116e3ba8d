"""What the subcommands share: loading the configuration, the ledger's advice."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from ingestd.config.credentials import config_path_from
from ingestd.config.load import load_config
from ingestd.config.schema import Config
from ingestd.errors import IngestdError, LedgerDamaged
from ingestd.ledger.api import JobLedger, open_ledger

T = TypeVar("T")


def load(args: argparse.Namespace) -> Config:
    """The configuration ``-c`` names (or $INGESTD_CONFIG, or the default path)."""
    return load_config(config_path_from(args.config, os.environ))


@contextlib.contextmanager
def advice_names(config: Config) -> Iterator[None]:
    """A damaged ledger's advice names this configuration file in its restore command."""
    try:
        yield
    except LedgerDamaged as exc:
        exc.config_file = config.source
        raise


def with_ledger(config: Config, action: Callable[[JobLedger], Awaitable[T]]) -> T:
    """Open the ledger for writing, run ``action`` on it, close it."""

    async def go() -> T:
        ledger = await open_ledger(config)
        try:
            return await action(ledger)
        finally:
            await ledger.close()

    with advice_names(config):
        return asyncio.run(go())


def no_such_node(name: str) -> IngestdError:
    """``--node`` or ``forget-node`` named no node of the shared ledger (exit 1)."""
    return IngestdError(f"no node {name!r} in the shared ledger (`ingestd status` lists them)")
