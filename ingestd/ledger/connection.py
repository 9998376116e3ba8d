"""The ledger's one SQLite connection: every statement passes through :class:`Guarded`.

Write failures (disk full, read-only file system or folder, I/O errors) all
pass through one place, :class:`Guarded`, which raises
:class:`LedgerUnwritable` and notes the problem for the daemon's ledger watch
(``ledger/watch.py``), so new work stops instead of a task crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from ingestd.errors import LedgerDamaged, LedgerError, LedgerUnwritable

BUSY_TIMEOUT_MS = 10_000
# SQLite's smallest default limit on ``?`` placeholders in one statement is 999.
MAX_VARIABLES = 900


class Transaction:
    """``async with``: BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on an exception)."""

    def __init__(self, conn: Guarded) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.begin()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                await self._conn.execute("COMMIT")
            elif self._conn.in_transaction:
                # After SQLITE_FULL or an I/O error SQLite may have rolled back already.
                await self._conn.execute("ROLLBACK")
        finally:
            self._conn.end()


# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR = 3, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
DAMAGE_CODES = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_WRITE_FAILURES = {
    _SQLITE_FULL: "the ledger's disk is full (or the ledger reached its size limit)",
    _SQLITE_READONLY: "the ledger is read-only (read-only file system, or no write permission)",
    _SQLITE_IOERR: "the disk under the ledger reported an I/O error",
    _SQLITE_CANTOPEN: "the ledger's files cannot be opened for writing (permissions?)",
    _SQLITE_PERM: "the ledger may not be written (permissions)",
}


_MAYBE_READ_ONLY = frozenset({_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM})
READ_ONLY_FS = (
    "the ledger's folder is on a read-only file system: remount it read-write, "
    "or set ledger.path to a writable place"
)


def on_read_only_fs(path: Path) -> bool:
    """Whether ``path`` (or, while it does not exist, its folder) is on a read-only mount."""
    for place in (path, path.parent):
        try:
            return bool(os.statvfs(place).f_flag & os.ST_RDONLY)
        except OSError:
            continue
    return False


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


class Guarded:
    """The one connection, with every statement passing through one place.

    A write that fails for want of space or permission becomes
    :class:`LedgerUnwritable` (and the ledger notes it) instead of a plain
    ``sqlite3.OperationalError`` that each caller would have to recognise;
    damage found on the way (SQLITE_CORRUPT, SQLITE_NOTADB) becomes
    :class:`LedgerDamaged`, which says how to recover.
    """

    def __init__(
        self, path: Path, conn: aiosqlite.Connection, on_write_failure: Callable[[str], None]
    ) -> None:
        self._path = path
        self._conn = conn
        self._on_write_failure = on_write_failure
        # One connection, many tasks: while one task's transaction is open, another
        # task's statements wait. Else its BEGIN fails ("cannot start a transaction
        # within a transaction") and its plain writes would join the open transaction.
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        # Statements other than SELECT and PRAGMA sent so far: the ledger's counts() knows by it
        # whether anything may have changed through this connection since it last counted.
        self.writes = 0

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn.in_transaction)

    async def begin(self) -> None:
        """BEGIN IMMEDIATE, once no other task has a transaction open; :meth:`end` after."""
        await self._lock.acquire()
        self._owner = asyncio.current_task()
        try:
            await self._execute("BEGIN IMMEDIATE", ())
        except BaseException:
            self.end()
            raise

    def end(self) -> None:
        """The transaction is committed or rolled back: other tasks may go on."""
        self._owner = None
        self._lock.release()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The connection: at once inside the caller's own transaction, else after others'."""
        if self._owner is not None and self._owner is asyncio.current_task():
            yield
            return
        async with self._lock:
            yield

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite's errors as the ledger's own, where it has one (see :meth:`_translate`)."""
        try:
            yield
        except sqlite3.Error as exc:
            translated = self._translate(exc)
            if translated is None:
                raise
            raise translated from exc

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> aiosqlite.Cursor:
        async with self._turn():
            return await self._execute(sql, parameters)

    async def fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of a query in one hop to the connection's thread (execute and fetch
        separately would take two)."""
        async with self._turn():
            with self._translated():
                return list(await self._conn.execute_fetchall(sql, parameters))

    async def fetchone(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query that gives one row at most (an id, a count, LIMIT 1)."""
        rows = await self.fetchall(sql, parameters)
        return rows[0] if rows else None

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> aiosqlite.Cursor:
        async with self._turn():
            return await self._execute(sql, rows, many=True)

    async def _execute(self, sql: str, parameters: Any, *, many: bool = False) -> aiosqlite.Cursor:
        if not sql.lstrip()[:6].upper().startswith(("SELECT", "PRAGMA")):
            self.writes += 1
        with self._translated():
            if many:
                return await self._conn.executemany(sql, parameters)
            return await self._conn.execute(sql, parameters)

    async def executescript(self, script: str) -> aiosqlite.Cursor:
        self.writes += 1
        with self._translated():
            async with self._lock:
                return await self._conn.executescript(script)

    async def close(self) -> None:
        await self._conn.close()

    def _translate(self, exc: sqlite3.Error) -> LedgerError | None:
        """The ledger's own error for ``exc``; None: let it through as it is."""
        code = primary_code(exc) or 0
        if code in DAMAGE_CODES:
            return LedgerDamaged(self._path, str(exc))
        what = _WRITE_FAILURES.get(code)
        if what is None:
            return None
        if code in _MAYBE_READ_ONLY and on_read_only_fs(self._path):
            what = READ_ONLY_FS  # not a permissions problem: chmod would not help
        problem = f"{what}: {self._path}: {exc}"
        self._on_write_failure(problem)
        return LedgerUnwritable(problem)


class Connected:
    """What the ledger's parts share: the connection, and transactions on it."""

    _conn: Guarded

    def transaction(self) -> Transaction:
        """``async with ledger.transaction():`` - BEGIN IMMEDIATE ... COMMIT (or ROLLBACK)."""
        return Transaction(self._conn)


def sqlite_uri(path: Path, *, readonly: bool, immutable: bool = False) -> str:
    """``file:`` URI of ``path``, percent-escaped: a ``?``, ``#`` or ``%`` in a folder's name
    would otherwise end the path or start a query (issue 11, finding 13).

    ``immutable``: SQLite neither locks nor looks for ``-wal``/``-shm``, for a ledger
    on a read-only mount that has no ``-wal`` (nothing can change it there)."""
    uri = Path(os.path.abspath(path)).as_uri()
    if immutable:
        return uri + "?mode=ro&immutable=1"
    return uri + ("?mode=ro" if readonly else "")


def marks(values: Sequence[Any]) -> str:
    """``?,?,?``: one placeholder per value."""
    return ",".join("?" * len(values))
