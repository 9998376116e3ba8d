"""``ingestd ledger copy --to URL``: a SQLite ledger's jobs into a shared ledger, once.

A site that grows from one machine to several keeps what its SQLite ledger knows,
so nothing is uploaded again: every job (every column but the claim, its paths
made portable: ``paths.py``), every queued deletion of a partial record and every
suspected orphan go into the shared ledger in one PostgreSQL transaction - a
failure half-way leaves the target's rows as they were. Then the SQLite ledger is
marked moved (``ledger/moved.py``): no daemon opens it for writing again.

The rules:

- The SQLite ledger's lock is held throughout (``lock.py``): a running daemon
  would go on writing to the ledger being copied.
- A target without tables is migrated first (``schema.migrate``, its own
  transactions, as ``ingestd ledger migrate`` would); one of another schema
  version is refused as a daemon refuses it.
- A job whose file has a live job (neither done nor skipped) in the target too is
  a conflict: two live jobs for one file would upload it twice. The whole copy is
  refused, nothing is merged.
- Ids: kept when the target holds no jobs yet (``retry 12`` still means job 12);
  else PostgreSQL gives new ones, and ``deletions.job_id`` and
  ``suspected_orphans.job_id`` follow them.
- Once: the SQLite ledger is marked "moving" before the transaction and "moved"
  after its commit (``ledger/moved.py``), and the transaction records ``copied
  COPY_ID`` in the shared ledger's ``meta``. A copy killed in between leaves a
  ledger no daemon opens; run again (same ``--to``), it finds that record and only
  marks the ledger moved: nothing is copied twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

from ingestd.errors import ConfigError, LedgerError
from ingestd.ledger.lock import LedgerLock
from ingestd.ledger.moved import MOVING_TO, LedgerMoved, describe_move
from ingestd.ledger.postgres import schema
from ingestd.ledger.postgres.connection import STATEMENT_TIMEOUT, PgConnection
from ingestd.ledger.postgres.paths import PATH_COLUMNS, PathMap
from ingestd.ledger.postgres.reach import reach
from ingestd.ledger.postgres.store import CONNECT_TIMEOUT, describe_url
from ingestd.ledger.store import SqliteLedger

# Rows per statement batch: one round trip carries many, and no batch runs long.
BATCH = 500
# A claim belongs to a node of the shared ledger; the SQLite ledger's daemon is none.
NOT_COPIED = frozenset({"lease_owner", "lease_until"})
_LIVE = "state NOT IN ('done', 'skipped')"
_FINAL_STATES = ("done", "skipped")


@dataclass(frozen=True, slots=True)
class Copied:
    """What a copy put into the shared ledger."""

    where: str  # postgresql://HOST/DB
    jobs: int
    live: int
    deletions: int
    orphans: int
    outside: int  # jobs under no watch folder of the configuration: kept as they were
    new_ids: bool  # the target held jobs already: PostgreSQL gave the copied ones new ids
    earlier: bool = False  # committed by an earlier attempt, cut off before marking it moved


class CommitUnknown(LedgerError):
    """The connection failed during the COMMIT: whether the shared ledger took the copy,
    only it knows (the next ``ledger copy`` asks it)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(
            f"the shared ledger {where} did not confirm the copy's commit ({problem}): run "
            "the copy again with the same --to; it finds out whether the jobs were taken"
        )


@dataclass(frozen=True, slots=True)
class _Source:
    copy_id: str
    jobs: list[dict[str, Any]]
    deletions: list[dict[str, Any]]
    orphans: list[dict[str, Any]]


def describe_target(url: str, key: str) -> str:
    """``postgresql://HOST/DB`` of the URL given under ``key`` (:class:`ConfigError`, the
    value not shown, when libpq cannot read it: its own message quotes the URL)."""
    try:
        return describe_url(url)
    except psycopg.Error:
        raise ConfigError(key, "is not a URL libpq can read (value not shown)") from None


async def copy_ledger(
    path: Path, url: str, *, password: str | None, roots: Mapping[str, str]
) -> Copied:
    """Copy the SQLite ledger at ``path`` into the shared ledger at ``url`` and mark it moved.

    ``roots``: watch folder name -> this machine's path of it. Raises
    :class:`LedgerBusy` while a daemon holds the ledger, :class:`LedgerError` for a
    ledger that is missing or moved already, a target that cannot be used, and a
    conflict (nothing is copied then).
    """
    where = describe_target(url, "--to")
    with LedgerLock(path, purpose="; stop the daemon first, then copy its ledger"):
        if not path.exists() or path.stat().st_size == 0:
            raise LedgerError(f"there is no ledger at {path} (ledger.path): nothing to copy")
        try:
            source = await SqliteLedger.open(path, copying=True)
        except LedgerMoved as moved:
            raise LedgerError(
                f"the ledger {path} was already moved to the shared ledger {moved.to} "
                f"({describe_move(moved.at)}): nothing was copied again"
            ) from None
        try:
            copied = await _move(source, url, where, password, PathMap(roots))
        finally:
            await source.close()
    return copied


async def _move(
    source: SqliteLedger, url: str, where: str, password: str | None, paths: PathMap
) -> Copied:
    """Mark the SQLite ledger moving, copy, mark it moved (or this machine's again)."""
    unfinished = await source.get_meta(MOVING_TO)
    if unfinished and unfinished != where:
        raise LedgerError(
            f"an earlier copy of {source.path} into the shared ledger {unfinished} did not "
            f"finish: run it again with --to that ledger (it knows whether that ledger took "
            "the jobs); nothing was copied"
        )
    rows = _Source(
        copy_id=await source.begin_move(where),
        jobs=[dict(row) for row in await source.rows_of("jobs")],
        deletions=[dict(row) for row in await source.rows_of("deletions")],
        orphans=[dict(row) for row in await source.rows_of("suspected_orphans")],
    )
    try:
        copied = await _into_shared(url, where, password, rows, paths)
    except CommitUnknown:
        raise  # the ledger stays "moving": the next copy finds out what the commit did
    except Exception:  # nothing was committed: the ledger is this machine's again
        with contextlib.suppress(LedgerError):  # else the next copy sorts it out
            await source.abandon_move()
        raise
    try:
        await source.mark_moved(where, time.time())
    except LedgerError as exc:
        raise LedgerError(
            f"the jobs were copied to the shared ledger {where}, but {source.path} could not "
            f"be marked moved ({exc}): run the copy again once it can be written"
        ) from None
    return copied


async def _into_shared(
    url: str, where: str, password: str | None, rows: _Source, paths: PathMap
) -> Copied:
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "ingestd ledger copy",
    }
    if password is not None:
        kwargs["password"] = password
    await reach(url, password, where)  # why it cannot, if it cannot
    pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
        url, min_size=1, max_size=1, kwargs=kwargs, open=False, timeout=STATEMENT_TIMEOUT
    )
    try:
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT + 1)
        except psycopg_pool.PoolTimeout:
            raise LedgerError(
                f"cannot connect to the shared ledger {where} within {CONNECT_TIMEOUT + 1} s: "
                "check --to, the password (ledger.password_file, the credential "
                "ledger-password, PGPASSFILE) and that PostgreSQL runs; nothing was copied"
            ) from None
        conn = PgConnection(
            pool, node="ledger-copy", lease=60.0, paths=PathMap({}), on_failure=lambda _: None
        )
        if await schema.version_of(conn) == 0:
            await schema.migrate(conn)
        await schema.check(conn)
        return await _copy_rows(pool, where, rows, paths)
    finally:
        await pool.close()


async def _copy_rows(
    pool: psycopg_pool.AsyncConnectionPool[Any], where: str, rows: _Source, paths: PathMap
) -> Copied:
    """All the rows in one transaction; the first conflict (or failure) rolls it all back."""
    jobs = [_portable(job, paths) for job in rows.jobs]
    outside = sum(not _under_a_folder(job["path"], paths) for job in rows.jobs)
    live = sum(job["state"] not in _FINAL_STATES for job in rows.jobs)
    done_key = f"copied {rows.copy_id}"
    committing = False
    try:
        async with pool.connection() as conn, conn.transaction():
            cursor = conn.cursor()
            await cursor.execute("SELECT value FROM meta WHERE key = %s", (done_key,))
            found = await cursor.fetchone()
            if found is not None:
                return Copied(**{**json.loads(str(found[0])), "earlier": True})
            await _refuse_conflicts(cursor, jobs, rows.jobs)
            await cursor.execute("SELECT EXISTS (SELECT 1 FROM jobs)")
            found = await cursor.fetchone()
            new_ids = bool(found and found[0])
            ids = await _insert_jobs(cursor, jobs, keep_ids=not new_ids)
            await _insert(cursor, "deletions", rows.deletions, ids, skip=("id",))
            await _insert(cursor, "suspected_orphans", rows.orphans, ids)
            copied = Copied(
                where, len(jobs), live, len(rows.deletions), len(rows.orphans), outside, new_ids
            )
            record = json.dumps(asdict(copied))
            await cursor.execute("INSERT INTO meta(key, value) VALUES(%s, %s)", (done_key, record))
            committing = True  # what the COMMIT does, only the server knows if it fails now
    except psycopg.Error as exc:
        # The first line: what went wrong (a DETAIL line after it may quote a whole row).
        text = " ".join(str(exc).strip().split("\n")[0].split()) or type(exc).__name__
        if committing:
            raise CommitUnknown(where, text) from None
        if isinstance(exc, psycopg.errors.UniqueViolation):
            raise LedgerError(
                f"the shared ledger {where} took jobs for the same files or ids meanwhile (a "
                "node runs on it): nothing was copied; run the copy again"
            ) from None
        raise LedgerError(
            f"the shared ledger {where} refused the copy ({text}): nothing was copied"
        ) from None
    return copied


def _portable(job: Mapping[str, Any], paths: PathMap) -> dict[str, Any]:
    """The job as the shared ledger stores it: portable paths, no claim."""
    out: dict[str, Any] = {}
    for key, value in job.items():
        if key in NOT_COPIED:
            continue
        out[key] = (
            paths.portable(value) if key in PATH_COLUMNS and isinstance(value, str) else value
        )
    return out


def _under_a_folder(path: str, paths: PathMap) -> bool:
    return not paths.portable(path).startswith("/")


async def _refuse_conflicts(
    cursor: psycopg.AsyncCursor[Any], jobs: Sequence[Mapping[str, Any]], local: Sequence[Any]
) -> None:
    """A live job of the copy whose file has a live job in the target: refuse it all.
    ``jobs`` as the target stores them, ``local`` as this machine knows them (the message
    names the path the operator knows)."""
    live = [
        (job["path"], mine["path"])
        for job, mine in zip(jobs, local, strict=True)
        if job["state"] not in _FINAL_STATES
    ]
    if not live:
        return
    await cursor.execute(
        f"SELECT path FROM jobs WHERE path = ANY(%s) AND {_LIVE}", ([p for p, _ in live],)
    )
    taken = {str(row[0]) for row in await cursor.fetchall()}
    clashes = [mine for portable, mine in live if portable in taken]
    if clashes:
        raise LedgerError(
            f"{len(clashes)} file(s) of this ledger have a live job in the shared ledger too, "
            f"the first {clashes[0]}: nothing was copied (two live jobs for one file would "
            "upload it twice); finish them on one side first (`ingestd run --once` here, or "
            "let the shared ledger's nodes), then copy again"
        )


async def _insert_jobs(
    cursor: psycopg.AsyncCursor[Any], jobs: Sequence[Mapping[str, Any]], *, keep_ids: bool
) -> dict[int, int]:
    """Insert the jobs; returns old id -> id in the shared ledger."""
    if not jobs:
        return {}
    if keep_ids:
        # Past every copied id before any is written, so a node adding a job meanwhile
        # cannot be given one of them (a sequence is not rolled back: a gap at worst).
        await cursor.execute(
            "SELECT setval(pg_get_serial_sequence('jobs', 'id'), GREATEST(%s, "
            "COALESCE(pg_sequence_last_value(pg_get_serial_sequence('jobs', 'id')::regclass), 1)))",
            (max(int(job["id"]) for job in jobs),),
        )
        await _insert(cursor, "jobs", jobs, None)
        return {int(job["id"]): int(job["id"]) for job in jobs}
    columns = [key for key in jobs[0] if key != "id"]
    sql = _insert_sql("jobs", columns) + " RETURNING id"
    ids: dict[int, int] = {}
    for first in range(0, len(jobs), BATCH):
        part = jobs[first : first + BATCH]
        await cursor.executemany(sql, [[job[c] for c in columns] for job in part], returning=True)
        given = []
        async for result in cursor.results():
            row = await result.fetchone()
            assert row is not None
            given.append(int(row[0]))
        ids.update((int(job["id"]), new) for job, new in zip(part, given, strict=True))
    return ids


async def _insert(
    cursor: psycopg.AsyncCursor[Any],
    table: str,
    rows: Sequence[Mapping[str, Any]],
    ids: Mapping[int, int] | None,
    *,
    skip: tuple[str, ...] = (),
) -> None:
    """Insert ``rows`` as they are, but for the ``skip`` columns and ``job_id`` mapped
    through ``ids`` (None: unchanged; a job the ledger no longer holds: NULL). A record
    the target has queued or noted already is not queued twice."""
    if not rows:
        return
    columns = [key for key in rows[0] if key not in skip]
    sql = _insert_sql(table, columns) + ("" if table == "jobs" else " ON CONFLICT DO NOTHING")

    def values(row: Mapping[str, Any]) -> list[Any]:
        out = [row[c] for c in columns]
        if ids is not None and "job_id" in columns and row["job_id"] is not None:
            out[columns.index("job_id")] = ids.get(int(row["job_id"]))
        return out

    for first in range(0, len(rows), BATCH):
        await cursor.executemany(sql, [values(row) for row in rows[first : first + BATCH]])


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    marks = ", ".join(["%s"] * len(columns))
    return f"INSERT INTO {table}({', '.join(columns)}) VALUES({marks})"
