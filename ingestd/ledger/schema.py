"""The ledger's tables on disk: the DDL, the forward migrations, and preparing a connection.

The schema carries a version (``meta.schema_version``) and migrates forward, one
transaction a step, so a crash mid-migration leaves the previous version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ingestd.errors import LedgerDamaged, LedgerError, LedgerUnwritable
from ingestd.ledger.connection import BUSY_TIMEOUT_MS, Guarded
from ingestd.ledger.model import DISPATCHABLE, TWIN_STATES, State
from ingestd.ledger.moved import refuse_moved

SCHEMA_VERSION = 5
# Test hook, not a setting: ``INGESTD_LEDGER_MAX_PAGES=N`` applies ``PRAGMA
# max_page_count=N`` at open (SQLite raises it to the current size if smaller),
# so the ledger cannot grow: exactly what a full disk does to it.
MAX_PAGES_ENV = "INGESTD_LEDGER_MAX_PAGES"
# The tables an ingestd ledger holds; any other means the file is not ours.
OWN_TABLES = frozenset({"meta", "jobs", "deletions", "suspected_orphans"})


def states_sql(states: tuple[State, ...]) -> str:
    """``'queued','creating'``: states spelt literally, as a partial index must see them."""
    return ",".join(f"'{s.value}'" for s in states)


DISPATCHABLE_SQL = states_sql(DISPATCHABLE)
TWIN_STATES_SQL = states_sql(TWIN_STATES)
# Indexes that speed queries up without changing what the ledger means: made when missing
# at every open (an older ingestd ignores them), so they need no schema version.
# jobs_dispatch: due_jobs walks the dispatchable jobs oldest file first and stops at its
# LIMIT, instead of sorting all of them at every dispatch (thousands of queued files).
# jobs_after_pending, jobs_owned: housekeeping asks every minute for done jobs whose
# after-upload step is due; by state alone that reads every done row (a million files).
INDEXES = f"""
CREATE INDEX IF NOT EXISTS jobs_dispatch ON jobs(mtime_ns, id)
    WHERE state IN ({DISPATCHABLE_SQL});
CREATE INDEX IF NOT EXISTS jobs_after_pending ON jobs(id) WHERE state='done' AND after_done=0;
CREATE INDEX IF NOT EXISTS jobs_owned ON jobs(id) WHERE state='done' AND left_alone='owned';
"""
# Jobs per state, kept by triggers in the transaction of every change, so counting is a
# read of a few rows, not of a million (health every few seconds, /metrics, ``ingestd
# status``). The counts are rows of ``meta`` (COUNT_KEY + state), not a table of their
# own: an ingestd refuses a ledger holding a table it does not know (OWN_TABLES), so an
# older one would refuse the ledger after a downgrade. Like INDEXES they need no schema
# version (nor a shared-ledger migration: PostgreSQL counts its rows): made, and filled,
# when the triggers are missing at open, in one transaction; an older ingestd's writes
# keep them right too, since the triggers are the ledger's own.
COUNT_KEY = "jobs_in."
COUNTS_TRIGGERS = ("jobs_count_insert", "jobs_count_delete", "jobs_count_update")
_COUNT_UP = (
    f"INSERT INTO meta(key, value) VALUES('{COUNT_KEY}' || NEW.state, 1) "
    "ON CONFLICT(key) DO UPDATE SET value=value+1;"
)
_COUNT_DOWN = f"UPDATE meta SET value=value-1 WHERE key='{COUNT_KEY}' || OLD.state;"
COUNTS = f"""
BEGIN IMMEDIATE;
DELETE FROM meta WHERE key LIKE '{COUNT_KEY}%';
INSERT INTO meta(key, value) SELECT '{COUNT_KEY}' || state, COUNT(*) FROM jobs GROUP BY state;
CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN {_COUNT_UP} END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN {_COUNT_DOWN} END;
CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state IS NOT NEW.state BEGIN {_COUNT_DOWN} {_COUNT_UP} END;
COMMIT;
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    root TEXT NOT NULL,
    state TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    record_name TEXT,
    record_id TEXT,
    video_id TEXT,
    bytes_acked INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    chunk_size INTEGER,
    whole_file INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    create_started_at REAL,
    confirm_delay REAL,
    wait_reason TEXT,
    fail_reason TEXT,
    fail_detail TEXT,
    force INTEGER NOT NULL DEFAULT 0,
    discovered_at REAL NOT NULL,
    upload_started_at REAL,
    uploaded_at REAL,
    done_at REAL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_live_path ON jobs(path)
    WHERE state NOT IN ('done', 'skipped');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_path ON jobs(path);
CREATE TABLE IF NOT EXISTS deletions (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    job_id INTEGER,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL
);
"""


# Each step takes the schema from version N-1 to N; version 1 is SCHEMA.
MIGRATIONS: dict[int, str] = {
    2: """
ALTER TABLE jobs ADD COLUMN fingerprint TEXT;
ALTER TABLE jobs ADD COLUMN final_path TEXT;
ALTER TABLE jobs ADD COLUMN after_done INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cleaned_at REAL;
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs(fingerprint);
-- Version 1 ran the after-upload action inline with "done".
UPDATE jobs SET after_done=1 WHERE state='done';
""",
    # Records a reconciliation left alone: named like an interrupted create-upload of
    # ours, but not provably ours and empty (uploader._reconcile). ``ingestd status``
    # lists them for an operator.
    3: """
CREATE TABLE IF NOT EXISTS suspected_orphans (
    record_id TEXT PRIMARY KEY,
    job_id INTEGER,
    name TEXT NOT NULL,
    why TEXT NOT NULL,
    noted_at REAL NOT NULL
);
""",
    # The identity of the copy that move_to / failed_to made (a copy across file systems
    # has an inode of its own), and why an after-upload step left a file alone.
    4: """
ALTER TABLE jobs ADD COLUMN final_size INTEGER;
ALTER TABLE jobs ADD COLUMN final_mtime_ns INTEGER;
ALTER TABLE jobs ADD COLUMN final_inode INTEGER;
ALTER TABLE jobs ADD COLUMN final_device INTEGER;
ALTER TABLE jobs ADD COLUMN left_alone TEXT;
""",
    # A job's claim in a ledger shared by several daemons (postgres/claims.py): who holds
    # it and until when, by the database's clock; and the daemon that held it last (who
    # finished it, whose failures ``retry --node`` takes), and the one whose last byte made it
    # ``confirming`` (``export``'s node). A one-machine ledger leaves
    # them empty: the columns make one schema of both backends.
    5: """
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until REAL;
ALTER TABLE jobs ADD COLUMN last_node TEXT;
ALTER TABLE jobs ADD COLUMN uploaded_by TEXT;
""",
}


# How long a reader waits for a daemon that is creating or upgrading the ledger.
READER_WAIT = 5.0


@dataclass(frozen=True)
class Prepared:
    """What a prepared connection may rely on."""

    dispatch_index: bool  # jobs_dispatch exists
    kept_counts: bool  # the counts in meta are kept by their triggers (COUNTS)
    housekeeping_indexes: bool = False  # jobs_after_pending and jobs_owned exist


async def prepare(conn: Guarded, path: Path, readonly: bool, *, copying: bool = False) -> Prepared:
    """Check, migrate and tune a fresh connection. A ledger ``ingestd ledger copy`` moved
    is refused (moved.py; ``copying``: that copy)."""
    await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if readonly:
        await _wait_until_current(conn, path)
        return Prepared(dispatch_index=False, kept_counts=await _has_kept_counts(conn))
    await check_integrity(conn, path)
    await refuse_moved(conn, path, copying=copying)  # before anything, a migration, is written
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA synchronous=FULL")
    await conn.execute("PRAGMA foreign_keys=ON")
    version = await schema_version(conn)
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this ingestd understands "
            f"({SCHEMA_VERSION}); upgrade ingestd"
        )
    if version == 0:  # one transaction: a reader sees no ledger or a whole one
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{SCHEMA}\n"
            "INSERT INTO meta(key, value) VALUES('schema_version', '1') "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value;\nCOMMIT;"
        )
        version = 1
    for step in range(version + 1, SCHEMA_VERSION + 1):
        # One transaction a step: a crash mid-migration leaves the previous version.
        await conn.executescript(
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[step]}\n"
            f"UPDATE meta SET value='{step}' WHERE key='schema_version';\nCOMMIT;"
        )
    with contextlib.suppress(LedgerUnwritable):  # read-only: the queries do without
        await conn.executescript(INDEXES)
        if not await _has_kept_counts(conn):
            await _run_script(conn, COUNTS)
    indexes = {
        str(row[0])
        for row in await conn.fetchall(
            "SELECT name FROM sqlite_master WHERE type='index' AND name IN "
            "('jobs_dispatch', 'jobs_after_pending', 'jobs_owned')"
        )
    }
    max_pages = os.environ.get(MAX_PAGES_ENV)
    if max_pages:  # the test hook above
        await conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
    return Prepared(
        dispatch_index="jobs_dispatch" in indexes,
        kept_counts=await _has_kept_counts(conn),
        housekeeping_indexes={"jobs_after_pending", "jobs_owned"} <= indexes,
    )


async def _has_kept_counts(conn: Guarded) -> bool:
    """All the triggers of COUNTS are there (else counting reads the jobs)."""
    names = "','".join(COUNTS_TRIGGERS)
    row = await conn.fetchone(
        f"SELECT COUNT(*) FROM sqlite_master WHERE type='trigger' AND name IN ('{names}')"
    )
    return row is not None and int(row[0]) == len(COUNTS_TRIGGERS)


async def _run_script(conn: Guarded, script: str) -> None:
    """A script that is one transaction: rolled back whole if a statement of it fails."""
    try:
        await conn.executescript(script)
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


async def check_integrity(conn: Guarded, path: Path) -> None:
    """``PRAGMA quick_check`` (O(size), no index cross-check), and is the file ours at all?"""
    rows = await conn.fetchall("PRAGMA quick_check")
    problems = [" ".join(str(row[0]).split()) for row in rows]
    if problems != ["ok"]:  # the message stays one line
        shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
        raise LedgerDamaged(path, f"quick_check: {shown}")
    rows = await conn.fetchall("SELECT name FROM sqlite_master WHERE type='table'")
    tables = {str(row[0]) for row in rows}
    foreign = sorted(t for t in tables - OWN_TABLES if not t.startswith("sqlite_"))
    if foreign and "meta" not in tables:
        raise LedgerDamaged(
            path, f"a SQLite file of something else (tables {', '.join(foreign[:5])})"
        )


async def _wait_until_current(conn: Guarded, path: Path) -> None:
    """A reader (``ingestd status``) of a ledger a starting daemon is still creating or
    upgrading waits for it (a few seconds), rather than failing on a missing table."""
    deadline = time.monotonic() + READER_WAIT
    while (version := await schema_version(conn)) < SCHEMA_VERSION:
        if time.monotonic() > deadline:
            raise LedgerError(
                f"the ledger {path} has schema version {version}, this ingestd reads "
                f"{SCHEMA_VERSION}: start the daemon once to create or upgrade it"
            )
        await asyncio.sleep(0.1)


async def schema_version(conn: Guarded) -> int:
    meta = "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
    if await conn.fetchone(meta) is None:
        return 0
    row = await conn.fetchone("SELECT value FROM meta WHERE key='schema_version'")
    return int(row[0]) if row and row[0] else 0
