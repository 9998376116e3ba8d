"""The shared ledger's connections: ``connection.Guarded``'s interface over psycopg.

The ledger's statements are written once (``core.py`` and its mixins) in the
SQL both backends speak, with ``?`` placeholders. This module runs them on
PostgreSQL: :func:`translate` turns the few SQLite spellings into PostgreSQL's
and fences every write to ``jobs`` (see below); rows come back with each path
made this node's own (``paths.py``).

**Fencing.** Every ``UPDATE jobs`` and ``DELETE FROM jobs`` also requires that
no other node holds a live claim on the job (``lease_owner`` is this node, or
nobody, or the claim ran out by the database's clock), and an UPDATE of a job
this node holds renews its claim. So a node whose claim ran out and was taken
over can no longer move the job, whatever it still believes.

**Failures.** A connection that fails, or a statement that gets no answer within
``STATEMENT_TIMEOUT``, becomes :class:`LedgerUnwritable` ("the shared ledger is
unreachable since ..."): the daemon stops new work and its ledger watch probes
until PostgreSQL answers again; the pool reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import RowMaker

from ingestd.disk.judged import ANY_DEVICE
from ingestd.errors import LedgerError, LedgerUnwritable
from ingestd.ledger.connection import Write, Written
from ingestd.ledger.postgres.paths import DEVICE_COLUMNS, PATH_COLUMNS, PathMap
from ingestd.units import iso_time

# The database's clock, in Unix seconds: every claim is judged by it, never by a node's.
DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
# A statement that gets no answer in this long counts as a lost connection (a dead
# network answers nothing at all; the lease is judged against it, see claims.py).
STATEMENT_TIMEOUT = 10.0
_FENCE = f"(lease_owner IS NULL OR lease_owner=? OR lease_until<{DB_NOW})"
_RENEW = f"lease_until=CASE WHEN lease_owner=? THEN {DB_NOW}+? ELSE lease_until END, "


class Translated:
    """A statement as PostgreSQL takes it, and the fence's parameters it needs."""

    __slots__ = ("fenced", "renews", "sql")

    def __init__(self, sql: str, renews: bool, fenced: bool) -> None:
        self.sql = sql
        self.renews = renews  # takes (node, lease) before the statement's own parameters
        self.fenced = fenced  # takes (node,) after them


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> Translated:
    """SQLite's spelling to PostgreSQL's, and the fence on writes to ``jobs``."""
    text = sql.replace("%", "%%")
    text = re.sub(r"\bIS \?", "IS NOT DISTINCT FROM ?", text)
    if re.match(r"\s*INSERT OR IGNORE INTO ", text):
        text = text.replace("INSERT OR IGNORE INTO ", "INSERT INTO ", 1) + " ON CONFLICT DO NOTHING"
    renews = fenced = False
    update = re.match(r"\s*UPDATE jobs SET ", text)
    if update or re.match(r"\s*DELETE FROM jobs WHERE ", text):
        where = text.index(" WHERE ")
        if re.search(r"\b(RETURNING|ORDER BY|LIMIT)\b", text[where:]):
            raise LedgerError(f"a write to jobs the fence cannot wrap: {sql}")
        text = f"{text[: where + 7]}({text[where + 7 :]}) AND {_FENCE}"
        fenced = True
        if update:
            text = text[: update.end()] + _RENEW + text[update.end() :]
            renews = True
    return Translated(text.replace("?", "%s"), renews, fenced)


class PgRow(tuple[Any, ...]):
    """A row that knows its column names, like ``sqlite3.Row`` (``row[0]``, ``row["id"]``,
    ``row.keys()``, ``dict(row)``)."""

    names: tuple[str, ...]

    def __new__(cls, values: Iterable[Any], names: tuple[str, ...]) -> PgRow:
        row = super().__new__(cls, values)
        row.names = names
        return row

    def keys(self) -> list[str]:
        return list(self.names)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names.index(key))
        return tuple.__getitem__(self, key)


class Result:
    """What :meth:`PgConnection.execute` gives back: how many rows it touched."""

    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount
        self.lastrowid: int | None = None


class PgConnection:
    """The shared ledger's ``Guarded``: statements of the ledger's mixins, on a pool."""

    def __init__(
        self,
        pool: psycopg_pool.AsyncConnectionPool[Any],
        *,
        node: str,
        lease: float,
        paths: PathMap,
        on_failure: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.node = node
        self.lease = lease
        self.paths = paths
        self._on_failure = on_failure
        self._tx: dict[asyncio.Task[Any], psycopg.AsyncConnection[Any]] = {}
        self.writes = 0
        # A statement unanswered for a quarter of the lease counts as a lost connection, so
        # a failed renewal is known while the claim still has time (claims.py).
        self.timeout = max(1.0, min(STATEMENT_TIMEOUT, lease / 4))
        self.down_since: float | None = None  # wall time the first failure of a run

    # --- rows -----------------------------------------------------------------------

    def _row_maker(self, cursor: Any) -> RowMaker[PgRow]:
        names = tuple(col.name for col in cursor.description or ())
        local = [i for i, name in enumerate(names) if name in PATH_COLUMNS]
        devices = [i for i, name in enumerate(names) if name in DEVICE_COLUMNS]
        to_local = self.paths.local

        def make(values: Sequence[Any]) -> PgRow:
            if local or devices:
                values = list(values)
                for i in local:
                    if isinstance(values[i], str):
                        values[i] = to_local(values[i])
                for i in devices:
                    if values[i] is not None:
                        values[i] = ANY_DEVICE
            return PgRow(values, names)

        return make

    # --- transactions -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """``async with``: BEGIN ... COMMIT on one connection of the pool (ROLLBACK on an
        exception); the task's statements meanwhile go to that connection."""
        task = _task()
        with self._translated():
            async with asyncio.timeout(self.timeout):
                conn = await self.pool.getconn()
        try:
            with self._translated():
                await conn.execute("BEGIN")
            self._tx[task] = conn
            try:
                yield
            except BaseException:
                del self._tx[task]
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
                raise
            del self._tx[task]
            with self._translated():
                async with asyncio.timeout(self.timeout):
                    await conn.commit()
        finally:
            self._tx.pop(task, None)
            await self.pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        own = self._tx.get(_task())
        if own is not None:
            yield own
            return
        async with self.pool.connection() as conn:
            yield conn

    # --- statements ------------------------------------------------------------------------

    def _arguments(self, statement: Translated, parameters: Sequence[Any]) -> list[Any]:
        values = self.paths.parameters(parameters)
        if statement.renews:
            values = [self.node, self.lease, *values]
        if statement.fenced:
            values.append(self.node)
        return values

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Result:
        statement = translate(sql)
        self.writes += 1
        with self._translated():
            async with asyncio.timeout(self.timeout), self._connection() as conn:
                cursor = await conn.execute(statement.sql, self._arguments(statement, parameters))
                return Result(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Result:
        statement = translate(sql)
        self.writes += 1
        arguments = [self._arguments(statement, row) for row in rows]
        with self._translated():
            async with asyncio.timeout(self.timeout), self._connection() as conn:
                cursor = conn.cursor()
                await cursor.executemany(statement.sql, arguments)
                return Result(cursor.rowcount)

    async def write(self, write: Write) -> Written:
        """``connection.Guarded.write`` on PostgreSQL: ``write`` and the follow-up its outcome
        calls for, in one transaction (the caller's, if it has one open)."""
        if write.alone or _task() in self._tx:
            return await self._write(write)
        async with self.transaction():
            return await self._write(write)

    async def _write(self, write: Write) -> Written:
        if write.many:
            done = await self.executemany(write.sql, write.parameters)
        else:
            done = await self.execute(write.sql, write.parameters)
        follow = write.then if done.rowcount > 0 else write.otherwise
        if follow is not None:
            await self._write(follow)
        return Written(done.rowcount)

    async def fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[PgRow]:
        statement = translate(sql)
        with self._translated():
            async with asyncio.timeout(self.timeout), self._connection() as conn:
                cursor = conn.cursor(row_factory=self._row_maker)
                await cursor.execute(statement.sql, self._arguments(statement, parameters))
                return await cursor.fetchall()

    async def fetchone(self, sql: str, parameters: Sequence[Any] = ()) -> PgRow | None:
        rows = await self.fetchall(sql, parameters)
        return rows[0] if rows else None

    async def raw(self, sql: str, parameters: Sequence[Any] = ()) -> list[PgRow]:
        """A statement of the PostgreSQL backend's own (``%s`` placeholders, no fence, no path
        translation of its parameters); its rows if it gives any."""
        self.writes += 1
        with self._translated():
            async with asyncio.timeout(self.timeout), self._connection() as conn:
                cursor = conn.cursor(row_factory=self._row_maker)
                # No parameters: the simple protocol, which takes several statements (DDL).
                await cursor.execute(sql, list(parameters) if parameters else None)
                return await cursor.fetchall() if cursor.description else []

    async def close(self) -> None:
        await self.pool.close()

    # --- failures ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self) -> Any:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise self._unreachable(_one_line(exc)) from None
        except TimeoutError:
            raise self._unreachable(f"no answer within {self.timeout:g} s") from None
        except psycopg.Error as exc:
            raise LedgerError(f"the shared ledger refused a statement: {_one_line(exc)}") from None
        else:
            self.down_since = None

    def _unreachable(self, why: str) -> LedgerUnwritable:
        if self.down_since is None:
            self.down_since = time.time()
        problem = f"the shared ledger is unreachable since {iso_time(self.down_since)}: {why}"
        self._on_failure(problem)
        return LedgerUnwritable(problem)


def _task() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
