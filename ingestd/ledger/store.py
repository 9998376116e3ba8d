"""The job ledger on SQLite: WAL mode with ``synchronous=FULL``, via aiosqlite.

The single source of truth about what has been done. Every state change is
committed before the action that depends on it: "creating" before the
create-upload POST, the record id before the first chunk, ``bytes_acked``
after each acknowledged chunk (``transitions.py`` names them all). A SIGKILL
therefore costs at most two chunks (``bytes_acked`` may lag the server by one
chunk while the next is on the wire: ``upload/acks.py``). The schema carries a version and
migrates forward (``schema.py``).

What SQLite promises here (WAL + ``synchronous=FULL``): a transaction whose
COMMIT returned is on disk (the WAL is fsynced at every commit) and survives a
crash or a power cut, if the disk honours fsync; one that had not committed is
rolled back when the ledger is next opened. Damage from elsewhere (a disk that
lies about fsync, a bad block, a file overwritten) is caught at open by
``PRAGMA quick_check``: a damaged ledger stops the daemon instead of being
replaced by an empty one that would upload everything again (backup.py holds
the backups and the restore).

Write failures pass through one place (``connection.Guarded``), which raises
:class:`LedgerUnwritable` and notes the problem for the daemon's ledger watch
(``ledger/watch.py``), so new work stops instead of a task crash loop.

The rest of ingestd sees this class only as ``api.JobLedger``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import uuid
from pathlib import Path

import aiosqlite

from ingestd.disk.private import create_private, make_private_folders
from ingestd.errors import ConfigError, LedgerDamaged, LedgerError, LedgerUnwritable
from ingestd.ledger import schema
from ingestd.ledger.backup import refuse_lost_ledger
from ingestd.ledger.connection import (
    DAMAGE_CODES,
    Guarded,
    on_read_only_fs,
    primary_code,
    sqlite_uri,
)
from ingestd.ledger.core import LedgerCore
from ingestd.ledger.model import State
from ingestd.ledger.moved import COPY_ID, MOVED_AT, MOVED_TO, MOVING_TO

# How much the write probe makes the ledger grow (then shrink) to prove it can.
_PROBE_BYTES = 16 * 1024


class SqliteLedger(LedgerCore):
    """Async access to the ledger. One instance per process, one connection.

    ``write_problem`` is None while writes work; after a write fails it says
    why (and ``writable`` is cleared) until :meth:`probe_write` succeeds.
    """

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.write_problem: str | None = None
        self.writable = asyncio.Event()  # set while writes work
        self.writable.set()
        self.write_failed = asyncio.Event()  # set at a failure; the ledger watch clears it
        self._dispatch_index = False  # jobs_dispatch exists (see schema.INDEXES)
        self._kept_counts = False  # the counts in meta are kept by triggers (schema.COUNTS)
        self._counts: tuple[tuple[int, int], dict[str, int]] | None = None  # see counts()
        # Partial records queued for deletion through this connection: a worker wakes the
        # sweeper only when its job queued one.
        self.deletions_queued = 0
        # At least the rows in ``deletions`` (counted at open; only this process adds any,
        # under the daemon lock): while 0, deletions_for() needs no query.
        self._deletions_at_most = 0
        self._conn = Guarded(path, conn, self._note_write_failure)

    # --- opening ----------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path, *, readonly: bool = False, copying: bool = False
    ) -> SqliteLedger:
        """Open (creating it unless ``readonly``) and migrate the ledger at ``path``.

        Unless ``readonly``, the ledger must pass ``PRAGMA quick_check``
        first: a damaged or foreign file raises :class:`LedgerDamaged` and is
        left exactly as it is. A missing (or empty) file is a first start,
        unless backups of an earlier ledger lie beside it. A ledger that
        ``ingestd ledger copy`` moved into a shared one opens only ``readonly``
        (else ``LedgerMoved``, or ``CopyUnfinished`` unless ``copying``: moved.py).
        """
        if not readonly:
            refuse_lost_ledger(path)
        try:
            if readonly:
                conn = await _connect_readonly(path)
            else:
                make_private_folders(path.parent)
                # 0600 before SQLite makes it 0644; its -wal and -shm then take the same mode.
                # A folder that cannot be written: SQLite's own error says it below.
                with contextlib.suppress(OSError):
                    create_private(path)
                conn = await aiosqlite.connect(str(path), isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        conn.row_factory = sqlite3.Row
        ledger = cls(path, conn)
        try:
            prepared = await schema.prepare(ledger._conn, path, readonly, copying=copying)
            ledger._dispatch_index = prepared.dispatch_index
            ledger._kept_counts = prepared.kept_counts
            ledger._housekeeping_indexes = prepared.housekeeping_indexes
            ledger._deletions_at_most = await ledger.pending_deletions()
        except (LedgerError, ConfigError):  # ConfigError: moved (moved.py)
            await conn.close()
            raise
        except sqlite3.Error as exc:
            await conn.close()
            if primary_code(exc) in DAMAGE_CODES:
                raise LedgerDamaged(path, str(exc)) from None
            hint = "" if os.access(path.parent, os.W_OK) else " (its folder is not writable)"
            raise LedgerError(f"the ledger {path} cannot be used: {exc}{hint}") from None
        return ledger

    async def counts(self) -> dict[str, int]:
        """Jobs per state, as the triggers of schema.COUNTS keep them in ``meta`` (a ledger
        that has none yet, opened read-only, is counted row by row)."""
        if not self._kept_counts:
            return await super().counts()
        keys = [schema.COUNT_KEY + s.value for s in State]
        rows = await self._conn.fetchall(
            f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(keys))})", keys
        )
        found = {str(row[0]): int(row[1]) for row in rows}
        return {s.value: found.get(schema.COUNT_KEY + s.value, 0) for s in State}

    async def probe_write(self) -> bool:
        """Can the ledger grow and commit again? Clears ``write_problem`` when it can.

        Grows the ledger by a few pages and shrinks it back, committed, so both
        a full disk (or ``max_page_count``) and a read-only file system answer.
        """
        try:
            await self._conn.execute(
                "INSERT INTO meta(key, value) VALUES('write_probe', hex(zeroblob(?))) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (_PROBE_BYTES // 2,),
            )
            await self._conn.execute("DELETE FROM meta WHERE key='write_probe'")
        except (LedgerUnwritable, sqlite3.Error):
            return False
        return self._writes_work()

    async def close(self) -> None:
        await self._conn.close()

    # --- moving into a shared ledger (ingestd ledger copy) ---------------------------

    async def rows_of(self, table: str) -> list[sqlite3.Row]:
        """Every row of one of the ledger's own tables, in the order it was written."""
        if table not in schema.OWN_TABLES:
            raise LedgerError(f"no table {table!r} in a ledger")
        return await self._conn.fetchall(f"SELECT * FROM {table} ORDER BY rowid")

    async def begin_move(self, to: str) -> str:
        """Before ``ledger copy``'s transaction: no daemon opens this ledger until
        :meth:`mark_moved` or :meth:`abandon_move`. Returns this ledger's ``copy_id``,
        the same at every attempt (moved.py)."""
        copy_id = await self.get_meta(COPY_ID) or uuid.uuid4().hex
        async with self.transaction():
            await self._set_meta(COPY_ID, copy_id)
            await self._set_meta(MOVING_TO, to)
        return copy_id

    async def abandon_move(self) -> None:
        """The copy failed: the ledger is this machine's again."""
        await self._conn.execute("DELETE FROM meta WHERE key=?", (MOVING_TO,))

    async def mark_moved(self, to: str, at: float) -> None:
        """The shared ledger committed the copy: from now on no writable open succeeds."""
        async with self.transaction():
            await self._set_meta(MOVED_TO, to)
            await self._set_meta(MOVED_AT, repr(at))
            await self._conn.execute("DELETE FROM meta WHERE key=?", (MOVING_TO,))


async def _connect_readonly(path: Path) -> aiosqlite.Connection:
    """A read-only connection, also on a read-only mount (``status`` is documented
    read-only): there SQLite cannot make the ``-shm`` a WAL ledger needs, so a ledger
    with no ``-wal`` left (closed cleanly: nothing beyond the main file) opens immutable."""
    conn = await aiosqlite.connect(sqlite_uri(path, readonly=True), uri=True, isolation_level=None)
    try:
        await conn.execute("SELECT count(*) FROM sqlite_master")
        return conn
    except sqlite3.OperationalError:
        await conn.close()
        wal = path.with_name(path.name + "-wal")
        if not on_read_only_fs(path) or (wal.exists() and wal.stat().st_size > 0):
            raise
    return await aiosqlite.connect(
        sqlite_uri(path, readonly=True, immutable=True), uri=True, isolation_level=None
    )
