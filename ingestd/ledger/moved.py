"""A SQLite ledger moved into a shared one (``ingestd ledger copy``) is never written again.

A daemon started on a moved ledger would upload, from its own stale view, files the
shared ledger's nodes now take care of. So ``ledger copy`` marks it, in ``meta``,
in two steps around its PostgreSQL transaction:

1. before it: ``moving_to`` (the shared ledger as ``postgresql://HOST/DB``, never
   a password or query string) and ``copy_id`` (this ledger's name there, made
   once: the transaction records ``copied COPY_ID`` in the shared ledger's ``meta``);
2. after its commit: ``moved_to`` and ``moved_at`` (Unix time), ``moving_to`` gone.
   A copy that fails takes ``moving_to`` away again.

Every writable open refuses a ledger that carries either (:func:`refuse_moved`,
from ``schema.prepare``, so no caller can forget it), with a configuration error
that says what to do: a process killed between the commit and step 2 leaves no
window in which a daemon could start on it; the next ``ledger copy`` finds
``copied COPY_ID`` and only finishes step 2. Read-only opens (``status``,
``export``) still work.
"""

from __future__ import annotations

from pathlib import Path

from ingestd.errors import ConfigError
from ingestd.ledger.connection import Guarded
from ingestd.units import iso_time

MOVED_TO = "moved_to"
MOVED_AT = "moved_at"
MOVING_TO = "moving_to"
COPY_ID = "copy_id"
# What a restore keeps of the ledger it replaces (backup.py): a backup from before the
# copy must not bring a moved ledger back to life.
MARKER_KEYS = (MOVED_TO, MOVED_AT, MOVING_TO, COPY_ID)


class LedgerMoved(ConfigError):
    """A writable open of a SQLite ledger that ``ledger copy`` moved (exit 2)."""

    def __init__(self, path: Path, to: str, at: float | None) -> None:
        self.path = path
        self.to = to
        self.at = at
        super().__init__(
            "",
            f"the ledger {path} was moved to the shared ledger {to} ({describe_move(at)}): "
            "set ledger.url to it and remove ledger.path",
        )


class CopyUnfinished(ConfigError):
    """A writable open of a SQLite ledger whose ``ledger copy`` did not finish (exit 2)."""

    def __init__(self, path: Path, to: str) -> None:
        self.path = path
        self.to = to
        super().__init__(
            "",
            f"an `ingestd ledger copy` of the ledger {path} into the shared ledger {to} did "
            "not finish: run it again with the same --to (it knows whether the shared ledger "
            "took the jobs) before a daemon uses either",
        )


def describe_move(at: float | None) -> str:
    """``ingestd ledger copy, at 2026-12-01T05:45:45Z``."""
    return "ingestd ledger copy" + ("" if at is None else f", at {iso_time(at)}")


def moved_marker(meta: dict[str, str]) -> tuple[str, float | None] | None:
    """(where to, when) from a ledger's ``meta`` values; None: not moved."""
    to = meta.get(MOVED_TO)
    if not to:
        return None
    try:
        at: float | None = float(meta.get(MOVED_AT, ""))
    except ValueError:
        at = None
    return to, at


async def marker_of(conn: Guarded) -> dict[str, str]:
    """The :data:`MARKER_KEYS` the ledger holds (none: a ledger no copy touched)."""
    tables = await conn.fetchall("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'")
    if not tables:
        return {}  # a new ledger
    marks = ",".join("?" * len(MARKER_KEYS))
    rows = await conn.fetchall(f"SELECT key, value FROM meta WHERE key IN ({marks})", MARKER_KEYS)
    return {str(row[0]): str(row[1]) for row in rows}


async def refuse_moved(conn: Guarded, path: Path, *, copying: bool = False) -> None:
    """Raise :class:`LedgerMoved` for a moved ledger, :class:`CopyUnfinished` for one whose
    copy did not finish (unless it is that copy, run again: ``copying``)."""
    meta = await marker_of(conn)
    found = moved_marker(meta)
    if found is not None:
        raise LedgerMoved(path, *found)
    if meta.get(MOVING_TO) and not copying:
        raise CopyUnfinished(path, meta[MOVING_TO])
