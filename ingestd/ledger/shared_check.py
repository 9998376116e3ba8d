"""What ``ingestd check`` says of a shared ledger (``ledger.url``): can this node reach it,
is its schema this ingestd's, and does this node's daemon run (by its heartbeat)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingestd.config.schema import Config
from ingestd.errors import LedgerError


@dataclass(frozen=True, slots=True)
class SharedLedger:
    """What ``check`` found of a shared ledger (``ledger.url``)."""

    ok: bool
    line: str
    daemon: int | None  # the pid of this node's running daemon, as its heartbeat says


async def check_shared_ledger(config: Config) -> SharedLedger:
    """Connect (read-only: no node lock is taken) and check the schema, as a daemon would.
    The line names the ledger as ``postgresql://HOST/DB``: no password, no query string."""
    import psycopg

    from ingestd.config.credentials import ledger_password
    from ingestd.ledger.api import open_ledger
    from ingestd.ledger.postgres.reach import Unreachable, reach
    from ingestd.ledger.postgres.store import describe_url
    from ingestd.ledger.schema import SCHEMA_VERSION
    from ingestd.logs import register_secret

    assert config.ledger.url is not None
    try:
        where = describe_url(config.ledger.url)
    except psycopg.Error:
        return SharedLedger(False, "shared ledger: libpq cannot read ledger.url", None)
    password = ledger_password(config.ledger)
    register_secret(password)
    try:
        await reach(config.ledger.url, password, where)  # why it cannot, if it cannot
        ledger = await open_ledger(config, readonly=True)
    except Unreachable as exc:
        return SharedLedger(False, f"shared ledger {where}: cannot connect: {exc.reason}", None)
    except LedgerError as exc:
        reason = str(exc).replace("-c FILE", f"-c {config.source}") if config.source else exc
        return SharedLedger(False, f"shared ledger {where}: {reason}", None)
    try:
        beat = await ledger.heartbeat()
    except LedgerError:
        beat = None
    finally:
        await ledger.close()
    daemon = None  # this node's daemon, if its last heartbeat says it runs, on this host
    if beat is not None and beat.stopped_at is None and Path(f"/proc/{beat.pid}").exists():
        daemon = beat.pid
    line = f"shared ledger {where}: schema version {SCHEMA_VERSION}, node {config.ledger.node}"
    return SharedLedger(True, line, daemon)
