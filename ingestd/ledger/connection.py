"""The ledger's one SQLite connection: every statement passes through :class:`Guarded`.

Write failures (disk full, read-only file system or folder, I/O errors) all
pass through one place, :class:`Guarded`, which raises
:class:`LedgerUnwritable` and notes the problem for the daemon's ledger watch
(``ledger/watch.py``), so new work stops instead of a task crash loop.

**Group commit.** A write outside a transaction (a :class:`Write`: one statement,
or one with the statement that follows it in the same transaction) is committed
before the caller's ``await`` returns, as if alone. The writes that several tasks
make meanwhile go to the connection's thread together: one trip there and back,
one transaction, one fsync, each write in a savepoint of its own, so one that
fails takes none of the others with it. Every hop to the thread and back costs
the event loop more than the SQLite work of a small transition (bench case 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from ingestd.errors import LedgerDamaged, LedgerError, LedgerUnwritable

BUSY_TIMEOUT_MS = 10_000
# SQLite's smallest default limit on ``?`` placeholders in one statement is 999.
MAX_VARIABLES = 900


@dataclass(frozen=True, slots=True)
class Write:
    """One write of the ledger's: a statement (``many``: once per row of ``parameters``), and
    the statement to run after it in the same transaction when it changed a row (``then``)
    or none (``otherwise``). Committed as a whole, or not at all."""

    sql: str
    parameters: Sequence[Any] = ()
    many: bool = False
    then: Write | None = None
    otherwise: Write | None = None

    @property
    def alone(self) -> bool:
        """One statement that SQLite commits by itself (no BEGIN ... COMMIT needed)."""
        return not self.many and self.then is None and self.otherwise is None


@dataclass(frozen=True, slots=True)
class Written:
    """What a :class:`Write`'s first statement did: rows changed, and the row it inserted."""

    rowcount: int
    lastrowid: int | None = None


def _run(conn: sqlite3.Connection, write: Write) -> Written:
    """In the connection's thread: ``write`` and the follow-up its outcome calls for."""
    if write.many:
        cursor = conn.executemany(write.sql, write.parameters)
    else:
        cursor = conn.execute(write.sql, write.parameters)
    done = Written(cursor.rowcount, cursor.lastrowid)
    follow = write.then if done.rowcount > 0 else write.otherwise
    if follow is not None:
        _run(conn, follow)
    return done


def _run_batch(conn: sqlite3.Connection, writes: Sequence[Write]) -> list[Written | sqlite3.Error]:
    """In the connection's thread: every write of ``writes`` in one transaction, each in a
    savepoint (an error undoes that write alone, and is its result). An error of BEGIN or
    COMMIT, or one that ended the transaction (SQLite rolls back by itself after some I/O
    errors), is raised: then none of them is written."""
    if len(writes) == 1 and writes[0].alone:
        return [_run(conn, writes[0])]  # SQLite's own transaction, committed with the statement
    results: list[Written | sqlite3.Error] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            conn.execute("SAVEPOINT write")
            try:
                results.append(_run(conn, write))
            except sqlite3.Error as exc:
                if not conn.in_transaction:
                    raise
                conn.execute("ROLLBACK TO write")
                results.append(exc)
            conn.execute("RELEASE write")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _counts(write: Write | None) -> int:
    """How many statements ``write`` may send (for :attr:`Guarded.writes`)."""
    return 0 if write is None else 1 + _counts(write.then) + _counts(write.otherwise)


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
        # Writes waiting for the next trip to the thread, and the task that takes them there.
        self._pending: list[tuple[Write, asyncio.Future[Written]]] = []
        self._flusher: asyncio.Task[None] | None = None

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
        if self._own_transaction():
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

    def _own_transaction(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> aiosqlite.Cursor | Written:
        """One statement. A write outside the caller's transaction is a :meth:`write`."""
        if not self._own_transaction() and _is_write(sql):
            return await self.write(Write(sql, parameters))
        async with self._turn():
            return await self._execute(sql, parameters)

    async def write(self, write: Write) -> Written:
        """Run ``write`` (with its follow-up), committed before this returns; inside the
        caller's transaction, it is committed with that. Returns what its first statement did.

        Outside a transaction, writes that other tasks make meanwhile go with it: one trip
        to the thread, one commit (the module docstring). A caller cancelled before its write
        went to the thread takes it back; once there, it runs (as any statement would)."""
        self.writes += _counts(write)
        if self._own_transaction():
            with self._translated():
                done: Written = await self._in_thread(_run, write)
            return done
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        entry = (write, future)
        self._pending.append(entry)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        try:
            return await future
        except asyncio.CancelledError:
            if entry in self._pending:
                self._pending.remove(entry)
            raise

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(sqlite3_connection, *args)`` in the connection's thread: one hop."""
        conn = self._conn
        return await conn._execute(function, conn._conn, *args)  # type: ignore[no-untyped-call]

    async def _flush(self) -> None:
        """Take the waiting writes to the thread, a batch a trip, until none waits."""
        while self._pending:
            async with self._lock:
                batch, self._pending = self._pending, []
                batch = [(write, future) for write, future in batch if not future.done()]
                if not batch:
                    continue
                try:
                    results = await self._in_thread(_run_batch, [w for w, _future in batch])
                except Exception as exc:  # none of the batch was written
                    failure = self._failure(exc)
                    for _write, future in batch:
                        if not future.done():
                            future.set_exception(copy.copy(failure))
                    continue
                except BaseException:  # this task cancelled: its waiters are too
                    for _write, future in batch:
                        future.cancel()
                    raise
            for (_write, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, sqlite3.Error):
                    future.set_exception(self._failure(result))
                else:
                    future.set_result(result)

    def _failure(self, exc: Exception) -> Exception:
        """What a waiter on a failed write raises: the ledger's own error, as
        :meth:`_translated` makes it, else ``exc`` itself."""
        translated = self._translate(exc) if isinstance(exc, sqlite3.Error) else None
        if translated is None:
            return exc
        translated.__cause__ = exc
        return translated

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
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])  # writes already sent are answered first
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


_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _is_write(sql: str) -> bool:
    """A statement that changes rows (not a PRAGMA, BEGIN, COMMIT or a query)."""
    return sql.lstrip()[:7].upper().startswith(_WRITE_VERBS)


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
