"""The job ledger: SQLite in WAL mode with ``synchronous=FULL``, via aiosqlite.

The single source of truth about what has been done. Every state change is
committed before the action that depends on it: "creating" before the
create-upload POST, the record id before the first chunk, ``bytes_acked``
after each acknowledged chunk. A SIGKILL therefore costs at most the chunk in
flight. The schema carries a version and migrates forward.

What SQLite promises here (WAL + ``synchronous=FULL``): a transaction whose
COMMIT returned is on disk (the WAL is fsynced at every commit) and survives a
crash or a power cut, if the disk honours fsync; one that had not committed is
rolled back when the ledger is next opened. Damage from elsewhere (a disk that
lies about fsync, a bad block, a file overwritten) is caught at open by
``PRAGMA quick_check``: a damaged ledger stops the daemon instead of being
replaced by an empty one that would upload everything again (backup.py holds
the backups and the restore).

Write failures (disk full, read-only file system or folder, I/O errors) all
pass through one place, :class:`_Guarded`, which raises
:class:`LedgerUnwritable` and notes the problem for the daemon's ledger watch
(``ledger/watch.py``), so new work stops instead of a task crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from ingestd.disk.private import create_private, make_private_folders
from ingestd.errors import LedgerDamaged, LedgerError, LedgerUnwritable

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 10_000
# Test hook, not a setting: ``INGESTD_LEDGER_MAX_PAGES=N`` applies ``PRAGMA
# max_page_count=N`` at open (SQLite raises it to the current size if smaller),
# so the ledger cannot grow: exactly what a full disk does to it.
MAX_PAGES_ENV = "INGESTD_LEDGER_MAX_PAGES"
# Backups beside the ledger are named LEDGER + this + YYYYMMDD-HHMMSS (backup.py).
BACKUP_INFIX = ".backup-"
# The tables an ingestd ledger holds; any other means the file is not ours.
_OWN_TABLES = frozenset({"meta", "jobs", "deletions", "suspected_orphans"})
# How much the write probe makes the ledger grow (then shrink) to prove it can.
_PROBE_BYTES = 16 * 1024


class State(enum.StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    CREATING = "creating"
    UPLOADING = "uploading"
    CONFIRMING = "confirming"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


_STATES = {state.value: state for state in State}
TERMINAL = frozenset({State.DONE, State.FAILED, State.SKIPPED})
# States a worker takes a job in (the job's phase tells the worker where to resume).
DISPATCHABLE = (State.QUEUED, State.CREATING, State.UPLOADING)
LIVE = tuple(s for s in State if s not in (State.DONE, State.SKIPPED))
# Files whose bytes are still on this machine: the backlog whose age is watched.
NOT_SENT = (State.WAITING, *DISPATCHABLE)
_DISPATCHABLE_SQL = ",".join(f"'{s.value}'" for s in DISPATCHABLE)
# A file's content twin counts once it is done or on its way (not waiting, failed, skipped).
_TWIN_STATES_SQL = ",".join(f"'{s.value}'" for s in (State.DONE, *DISPATCHABLE, State.CONFIRMING))
# Indexes that speed queries up without changing what the ledger means: made when missing
# at every open (an older ingestd ignores them), so they need no schema version.
# jobs_dispatch: due_jobs walks the dispatchable jobs oldest file first and stops at its
# LIMIT, instead of sorting all of them at every dispatch (thousands of queued files).
_INDEXES = f"""
CREATE INDEX IF NOT EXISTS jobs_dispatch ON jobs(mtime_ns, id)
    WHERE state IN ({_DISPATCHABLE_SQL});
"""

_SCHEMA = """
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


# Each step takes the schema from version N-1 to N; version 1 is _SCHEMA.
_MIGRATIONS: dict[int, str] = {
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
}


@dataclass(frozen=True)
class Unsent:
    """The files whose bytes are still on this machine (see :meth:`Ledger.unsent`)."""

    files: int
    queued: int
    """Ready to send, and not in a worker's hands."""
    oldest: Job | None


@dataclass(slots=True)
class Job:
    """One row of ``jobs``: one file path and everything done about it."""

    id: int
    path: str
    root: str
    state: State
    size: int
    mtime_ns: int
    inode: int
    device: int
    record_name: str | None
    record_id: str | None
    video_id: str | None
    bytes_acked: int
    bytes_sent: int
    chunk_size: int | None
    whole_file: int
    restarts: int
    sha256: str | None
    attempts: int
    next_attempt_at: float
    create_started_at: float | None
    confirm_delay: float | None
    wait_reason: str | None
    fail_reason: str | None
    fail_detail: str | None
    force: int
    discovered_at: float
    upload_started_at: float | None
    uploaded_at: float | None
    done_at: float | None
    updated_at: float
    # Schema 2
    fingerprint: str | None = None  # size + head and tail hashes: cheap content identity
    final_path: str | None = None  # where the source is after move_to / failed_to
    after_done: int = 0  # the after-upload action has been applied
    cleaned_at: float | None = None  # keep_for: when the kept copy was deleted
    # Schema 3: the moved copy's identity (None: not moved, or moved by a version-2 ingestd)
    final_size: int | None = None
    final_mtime_ns: int | None = None
    final_inode: int | None = None
    final_device: int | None = None
    # Why the after-upload action, keep_for or failed_to left the file alone
    # ("replaced", "missing", "owned"); set, it is not tried again ("owned": until no live
    # job owns the path, Ledger.retake_unowned).
    left_alone: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(zip(row.keys(), tuple(row), strict=True))
        values["state"] = State(values["state"])
        return cls(**values)

    @property
    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.inode, self.device)


JOB_COLUMNS = frozenset(f.name for f in fields(Job))


def _set_clause(changes: Mapping[str, Any], now: float) -> tuple[str, list[Any]]:
    """``col=?, ...`` for an UPDATE of ``changes`` (stamped ``updated_at``), and its values."""
    unknown = set(changes) - JOB_COLUMNS
    if unknown:
        raise LedgerError(f"unknown job fields: {sorted(unknown)}")
    stamped = {**changes, "updated_at": now}
    values = [v.value if isinstance(v, State) else v for v in stamped.values()]
    return ", ".join(f"{key}=?" for key in stamped), values


class Waiting(NamedTuple):
    """What a settle pass needs of a ``waiting`` job (no whole Job: passes are frequent)."""

    id: int
    path: str
    force: bool
    snapshot: tuple[int, int, int, int]


# What scans compare a file with: the newest job of its path (id, snapshot, state).
Known = tuple[int, tuple[int, int, int, int], State]
# SQLite's smallest default limit on ``?`` placeholders in one statement is 999.
_MAX_VARIABLES = 900


@dataclass(slots=True)
class Deletion:
    id: int
    record_id: str
    job_id: int | None
    reason: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Deletion:
        return cls(**dict(zip(row.keys(), tuple(row), strict=True)))


class Ledger:
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
        self._dispatch_index = False  # jobs_dispatch exists (see _INDEXES)
        self._counts: tuple[tuple[int, int], dict[str, int]] | None = None  # see counts()
        # Partial records queued for deletion through this connection: a worker wakes the
        # sweeper only when its job queued one.
        self.deletions_queued = 0
        # At least the rows in ``deletions`` (counted at open; only this process adds any,
        # under the daemon lock): while 0, deletions_for() needs no query.
        self._deletions_at_most = 0
        self._conn = _Guarded(self, conn)

    # --- opening ----------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Ledger:
        """Open (creating it unless ``readonly``) and migrate the ledger at ``path``.

        Unless ``readonly``, the ledger must pass ``PRAGMA quick_check``
        first: a damaged or foreign file raises :class:`LedgerDamaged` and is
        left exactly as it is. A missing (or empty) file is a first start,
        unless backups of an earlier ledger lie beside it.
        """
        if not readonly:
            _refuse_lost_ledger(path)
        try:
            if readonly:
                conn = await aiosqlite.connect(
                    sqlite_uri(path, readonly=True), uri=True, isolation_level=None
                )
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
            await ledger._prepare(readonly)
            ledger._deletions_at_most = await ledger.pending_deletions()
        except LedgerError:
            await conn.close()
            raise
        except sqlite3.Error as exc:
            await conn.close()
            if _primary_code(exc) in _DAMAGE_CODES:
                raise LedgerDamaged(path, str(exc)) from None
            hint = "" if os.access(path.parent, os.W_OK) else " (its folder is not writable)"
            raise LedgerError(f"the ledger {path} cannot be used: {exc}{hint}") from None
        return ledger

    async def _prepare(self, readonly: bool) -> None:
        await self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if readonly:
            return
        await self._check_integrity()
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA synchronous=FULL")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        version = await self._schema_version()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this ingestd understands "
                f"({SCHEMA_VERSION}); upgrade ingestd"
            )
        if version == 0:
            await self._conn.executescript(_SCHEMA)
            await self._set_meta("schema_version", "1")
            version = 1
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # One transaction a step: a crash mid-migration leaves the previous version.
            await self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{_MIGRATIONS[step]}\n"
                f"UPDATE meta SET value='{step}' WHERE key='schema_version';\nCOMMIT;"
            )
        with contextlib.suppress(LedgerUnwritable):  # read-only: the queries do without
            await self._conn.executescript(_INDEXES)
        index = "SELECT 1 FROM sqlite_master WHERE type='index' AND name='jobs_dispatch'"
        self._dispatch_index = await self._conn.fetchone(index) is not None
        max_pages = os.environ.get(MAX_PAGES_ENV)
        if max_pages:  # the test hook above
            await self._conn.execute(f"PRAGMA max_page_count={int(max_pages)}")

    async def _check_integrity(self) -> None:
        """``PRAGMA quick_check`` (O(size), no index cross-check), and is the file ours at all?"""
        rows = await self._conn.fetchall("PRAGMA quick_check")
        problems = [" ".join(str(row[0]).split()) for row in rows]
        if problems != ["ok"]:  # the message stays one line
            shown = "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
            raise LedgerDamaged(self.path, f"quick_check: {shown}")
        rows = await self._conn.fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        tables = {str(row[0]) for row in rows}
        foreign = sorted(t for t in tables - _OWN_TABLES if not t.startswith("sqlite_"))
        if foreign and "meta" not in tables:
            raise LedgerDamaged(
                self.path, f"a SQLite file of something else (tables {', '.join(foreign[:5])})"
            )

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
        self.write_problem = None
        self.writable.set()
        return True

    def _note_write_failure(self, problem: str) -> None:
        self.write_problem = problem
        self.writable.clear()
        self.write_failed.set()

    async def _schema_version(self) -> int:
        meta = "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        if await self._conn.fetchone(meta) is None:
            return 0
        value = await self.get_meta("schema_version")
        return int(value) if value else 0

    async def close(self) -> None:
        await self._conn.close()

    # --- meta -----------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        row = await self._conn.fetchone("SELECT value FROM meta WHERE key=?", (key,))
        return None if row is None else str(row[0])

    async def _set_meta(self, key: str, value: str) -> None:
        await self._conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    async def set_paused(self, paused: bool) -> None:
        await self._set_meta("paused", "1" if paused else "0")

    async def is_paused(self) -> bool:
        return await self.get_meta("paused") == "1"

    async def set_server_problem(self, problem: str | None, since: float) -> None:
        """What keeps the daemon from the server (refused credentials, a redirect), for
        ``ingestd status``, which runs in another process; None when there is nothing."""
        await self._set_meta("server_problem", problem or "")
        await self._set_meta("server_problem_since", repr(since) if problem else "")

    async def server_problem(self) -> tuple[str, float] | None:
        """:meth:`set_server_problem`'s last word: the problem and since when, or None."""
        problem = await self.get_meta("server_problem")
        since = await self.get_meta("server_problem_since")
        return (problem, float(since)) if problem and since else None

    # --- jobs -------------------------------------------------------------------------

    async def add_job(
        self, *, path: str, root: str, snapshot: tuple[int, int, int, int], state: State
    ) -> Job:
        now = time.time()
        size, mtime_ns, inode, device = snapshot
        cursor = await self._conn.execute(
            "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
            "discovered_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
            (path, root, state.value, size, mtime_ns, inode, device, now, now),
        )
        job_id = cursor.lastrowid
        assert job_id is not None
        return await self.get_job(job_id)

    async def add_jobs(
        self, *, root: str, files: Sequence[tuple[str, tuple[int, int, int, int]]], state: State
    ) -> dict[str, int]:
        """Add a job for each (path, snapshot), all in one transaction; returns path -> job id.

        For a scan that finds many new files at once: one commit instead of one each.
        """
        if not files:
            return {}
        now = time.time()
        rows = [(path, root, state.value, *snap, now, now) for path, snap in files]
        async with self.transaction():
            row = await self._conn.fetchone("SELECT COALESCE(MAX(id), 0) FROM jobs")
            before = int(row[0]) if row else 0
            await self._conn.executemany(
                "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
                "discovered_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
                rows,
            )
            new = await self._conn.fetchall("SELECT id, path FROM jobs WHERE id>?", (before,))
            added = {str(path): int(job_id) for job_id, path in new}
        return added

    async def get_job(self, job_id: int) -> Job:
        row = await self._conn.fetchone("SELECT * FROM jobs WHERE id=?", (job_id,))
        if row is None:
            raise LedgerError(f"no job {job_id} in the ledger")
        return Job.from_row(row)

    async def find_job(self, job_id: int) -> Job | None:
        row = await self._conn.fetchone("SELECT * FROM jobs WHERE id=?", (job_id,))
        return None if row is None else Job.from_row(row)

    async def update(self, job_id: int, **changes: Any) -> None:
        """Commit ``changes`` to one job (a single autocommitted, fsynced statement)."""
        assignments, values = _set_clause(changes, time.time())
        await self._conn.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*values, job_id))

    async def update_current(self, job: Job, **changes: Any) -> bool:
        """:meth:`update`, only while the job is still in ``job``'s state with ``job``'s record.

        For an answer that took a while: if the job moved on meanwhile (its file changed
        and it went back to ``waiting``, with another record since), nothing is written
        and the answer, which is about the old record, is dropped: returns False.
        """
        assignments, values = _set_clause(changes, time.time())
        cursor = await self._conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id=? AND state=? AND record_id IS ?",
            (*values, job.id, job.state.value, job.record_id),
        )
        return bool(cursor.rowcount)

    async def update_many(self, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """:meth:`update` for several jobs, committed together in one transaction: one
        statement (one trip to the ledger's thread) for all jobs changing the same fields."""
        if not changes:
            return
        now = time.time()
        shapes: dict[str, list[tuple[Any, ...]]] = {}
        for job_id, fields_ in changes:
            assignments, values = _set_clause(fields_, now)
            shapes.setdefault(assignments, []).append((*values, job_id))
        async with self.transaction():
            for assignments, rows in shapes.items():
                await self._conn.executemany(f"UPDATE jobs SET {assignments} WHERE id=?", rows)

    async def jobs_in(self, states: Iterable[State], *, order: str = "id") -> list[Job]:
        names = [s.value for s in states]
        marks = ",".join("?" * len(names))
        rows = await self._conn.fetchall(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY {order}", names
        )
        return [Job.from_row(row) for row in rows]

    async def waiting(self) -> list[Waiting]:
        """The ``waiting`` jobs, oldest first."""
        rows = await self._conn.fetchall(
            "SELECT id, path, force, size, mtime_ns, inode, device FROM jobs "
            "WHERE state='waiting' ORDER BY id"
        )
        return [Waiting(r[0], r[1], bool(r[2]), (r[3], r[4], r[5], r[6])) for r in rows]

    async def known_snapshots(self) -> dict[str, Known]:
        """The newest job of every path: its id, file snapshot and state (for scans)."""
        return await self._snapshots(
            "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs"
        )

    async def live_snapshots(self) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the jobs not done or skipped (at most one a path).

        A path's live job is always its newest: a new job for a path is only made
        once the old one is done or skipped. Index lookups, so cheap however many
        done jobs the ledger holds (intake/watcher.py keeps those in memory between scans).
        """
        marks = ",".join("?" * len(LIVE))
        return await self._snapshots(
            "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs "
            f"WHERE state IN ({marks})",
            [s.value for s in LIVE],
        )

    async def snapshots_of(self, job_ids: Iterable[int]) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the jobs ``job_ids`` (gone ones are left out)."""
        wanted = sorted(set(job_ids))
        found: dict[str, Known] = {}
        for first in range(0, len(wanted), _MAX_VARIABLES):
            part = wanted[first : first + _MAX_VARIABLES]
            found.update(
                await self._snapshots(
                    "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs "
                    f"WHERE id IN ({','.join('?' * len(part))})",
                    part,
                )
            )
        return found

    async def snapshots_for_paths(self, paths: Iterable[str]) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the newest job of each of ``paths`` that has one."""
        wanted = sorted(set(paths))
        found: dict[str, Known] = {}
        for first in range(0, len(wanted), _MAX_VARIABLES):
            part = wanted[first : first + _MAX_VARIABLES]
            found.update(
                await self._snapshots(
                    "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs "
                    f"WHERE path IN ({','.join('?' * len(part))})",
                    part,
                )
            )
        return found

    async def _snapshots(self, query: str, parameters: Sequence[Any] = ()) -> dict[str, Known]:
        # One fetchall: iterating a cursor would cost a thread hop every 64 rows.
        rows = await self._conn.fetchall(query + " ORDER BY id", parameters)
        known: dict[str, Known] = {}
        states = _STATES
        for row in rows:
            known[row[1]] = (row[0], (row[2], row[3], row[4], row[5]), states[row[6]])
        return known

    async def known_snapshots_for(self, path: str) -> Known | None:
        """The newest job of one path, as :meth:`known_snapshots` gives it."""
        row = await self._conn.fetchone(
            "SELECT id, size, mtime_ns, inode, device, state FROM jobs WHERE path=? "
            "ORDER BY id DESC LIMIT 1",
            (path,),
        )
        if row is None:
            return None
        return (row[0], (row[1], row[2], row[3], row[4]), State(row[5]))

    async def due_jobs(self, now: float, limit: int, exclude: Sequence[int]) -> list[Job]:
        """Jobs a worker may take now, oldest file first."""
        # "id NOT IN (NULL)" would match nothing: leave the clause out when no job is active.
        skip = f"AND id NOT IN ({','.join('?' * len(exclude))}) " if exclude else ""
        # The states literally, as the partial index jobs_dispatch has them: else SQLite
        # cannot tell that the index holds every row the query wants.
        index = "INDEXED BY jobs_dispatch " if self._dispatch_index else ""
        rows = await self._conn.fetchall(
            f"SELECT * FROM jobs {index}WHERE state IN ({_DISPATCHABLE_SQL}) "
            f"AND next_attempt_at<=? {skip}ORDER BY mtime_ns, id LIMIT ?",
            (now, *exclude, limit),
        )
        return [Job.from_row(row) for row in rows]

    async def backlog(self) -> tuple[int, int]:
        """Files not yet uploaded (waiting to confirming) and the bytes they still need to send."""
        row = await self._conn.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(size - bytes_acked), 0) FROM jobs "
            "WHERE state IN ('waiting','queued','creating','uploading','confirming')"
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def twin_of(self, fingerprint: str, job_id: int) -> Job | None:
        """Another job with the same content fingerprint: a done one first, else one in flight."""
        row = await self._conn.fetchone(
            f"SELECT * FROM jobs WHERE fingerprint=? AND id<>? AND state IN ({_TWIN_STATES_SQL}) "
            "ORDER BY state='done' DESC, id DESC LIMIT 1",
            (fingerprint, job_id),
        )
        return None if row is None else Job.from_row(row)

    async def twins_of(self, prints: Mapping[int, str]) -> dict[int, Job | None]:
        """:meth:`twin_of` for many jobs (job id -> fingerprint) in one query."""
        if not prints:
            return {}
        wanted = sorted(set(prints.values()))
        found: dict[str, list[Job]] = {}
        for first in range(0, len(wanted), _MAX_VARIABLES):
            part = wanted[first : first + _MAX_VARIABLES]
            for row in await self._conn.fetchall(
                f"SELECT * FROM jobs WHERE fingerprint IN ({','.join('?' * len(part))}) AND "
                f"state IN ({_TWIN_STATES_SQL})",
                part,
            ):
                job = Job.from_row(row)
                found.setdefault(str(job.fingerprint), []).append(job)
        return {
            job_id: max(
                (job for job in found.get(print_, ()) if job.id != job_id),
                key=lambda job: (job.state == State.DONE, job.id),
                default=None,
            )
            for job_id, print_ in prints.items()
        }

    async def pending_after_actions(self) -> list[Job]:
        """Done jobs whose after-upload action has not run (a crash came between)."""
        rows = await self._conn.fetchall(
            "SELECT * FROM jobs WHERE state='done' AND after_done=0 ORDER BY id"
        )
        return [Job.from_row(row) for row in rows]

    async def expired_keeps(self, before: float) -> list[Job]:
        """Done jobs whose kept source (or moved copy) is due for deletion (``keep_for``)."""
        rows = await self._conn.fetchall(
            "SELECT * FROM jobs WHERE state='done' AND after_done=1 AND cleaned_at IS NULL "
            "AND left_alone IS NULL AND done_at<=? ORDER BY id",
            (before,),
        )
        return [Job.from_row(row) for row in rows]

    async def live_owner(self, paths: Iterable[str], job_id: int) -> int | None:
        """A live job other than ``job_id`` whose file is at one of ``paths`` (None: none)."""
        wanted = sorted(set(paths))
        marks = ",".join("?" * len(LIVE))
        row = await self._conn.fetchone(
            f"SELECT id FROM jobs WHERE path IN ({','.join('?' * len(wanted))}) AND id<>? "
            f"AND state IN ({marks}) ORDER BY id LIMIT 1",
            (*wanted, job_id, *[s.value for s in LIVE]),
        )
        return None if row is None else int(row[0])

    async def next_due(self, exclude: Sequence[int]) -> float | None:
        """When the next job a worker could take becomes due (None: none is waiting)."""
        skip = f"AND id NOT IN ({','.join('?' * len(exclude))}) " if exclude else ""
        row = await self._conn.fetchone(
            f"SELECT MIN(next_attempt_at) FROM jobs WHERE state IN (?,?,?) {skip}",
            (*[s.value for s in DISPATCHABLE], *exclude),
        )
        return None if row is None or row[0] is None else float(row[0])

    async def due_in(self, state: State, now: float) -> list[Job]:
        """The jobs in ``state`` whose ``next_attempt_at`` has come, soonest first (index
        lookups: the confirmer asks at every upload's end, with many jobs not yet due)."""
        rows = await self._conn.fetchall(
            "SELECT * FROM jobs WHERE state=? AND next_attempt_at<=? ORDER BY next_attempt_at",
            (state.value, now),
        )
        return [Job.from_row(row) for row in rows]

    async def next_due_in(self, state: State) -> float | None:
        """The earliest ``next_attempt_at`` of the jobs in ``state`` (None: there are none)."""
        row = await self._conn.fetchone(
            "SELECT MIN(next_attempt_at) FROM jobs WHERE state=?", (state.value,)
        )
        return None if row is None or row[0] is None else float(row[0])

    async def unsent(self, busy: Iterable[int] = ()) -> Unsent:
        """The files not yet sent: how many, how many wait for a worker (not ``busy``), and
        the oldest. Counted in SQLite: a backlog of 100,000 files costs no Job objects."""
        not_sent = [s.value for s in NOT_SENT]
        marks = ",".join("?" * len(not_sent))
        row = await self._conn.fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", not_sent
        )
        files = int(row[0]) if row else 0
        if not files:
            return Unsent(0, 0, None)
        ready = [s.value for s in DISPATCHABLE]
        busy_ids = sorted(set(busy))
        row = await self._conn.fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(ready))}) "
            f"AND id NOT IN ({','.join('?' * len(busy_ids))})",
            [*ready, *busy_ids],
        )
        queued = int(row[0]) if row else 0
        row = await self._conn.fetchone(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY discovered_at, id LIMIT 1",
            not_sent,
        )
        return Unsent(files, queued, Job.from_row(row) if row else None)

    async def counts(self) -> dict[str, int]:
        """Jobs per state. Counting reads every row (100,000 done files: ~10 ms), and the
        health check asks every few seconds: while nothing was written, neither through
        this connection nor by another process (``PRAGMA data_version``), the last
        answer still holds and is given again."""
        row = await self._conn.fetchone("PRAGMA data_version")
        key = (self._conn.writes, int(row[0]) if row else -1)
        if self._counts is None or self._counts[0] != key:
            rows = await self._conn.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            found = {str(row[0]): int(row[1]) for row in rows}
            self._counts = (key, {s.value: found.get(s.value, 0) for s in State})
        return dict(self._counts[1])

    async def reset_to_waiting(
        self, job: Job, snapshot: tuple[int, int, int, int], reason: str
    ) -> None:
        """The file changed before ``done``: the same job takes the new version.

        Its partial record (if any) is queued for deletion in the same
        transaction, so no orphan survives a crash.
        """
        size, mtime_ns, inode, device = snapshot
        now = time.time()
        async with self.transaction():
            if job.record_id:
                await self._queue_deletion(job.record_id, job.id, reason, now)
            await self._conn.execute(
                "UPDATE jobs SET state='waiting', size=?, mtime_ns=?, inode=?, device=?, "
                "record_id=NULL, video_id=NULL, bytes_acked=0, sha256=NULL, attempts=0, "
                "next_attempt_at=0, create_started_at=NULL, confirm_delay=NULL, "
                "whole_file=0, restarts=0, fail_reason=NULL, fail_detail=NULL, "
                "wait_reason=?, force=0, updated_at=? WHERE id=?",
                (size, mtime_ns, inode, device, reason, now, job.id),
            )

    async def missing_sources(self) -> set[int]:
        """The jobs failed because their file disappeared before its upload finished
        (``source_missing``): the intake takes each up again once its file is back."""
        rows = await self._conn.fetchall(
            "SELECT id FROM jobs WHERE state='failed' AND fail_reason='source_missing'"
        )
        return {int(row[0]) for row in rows}

    async def take_up_returned(self, job_id: int, snapshot: tuple[int, int, int, int]) -> bool:
        """A job failed ``source_missing`` whose file is there again: the same job takes it,
        back to ``waiting`` as in :meth:`reset_to_waiting` (attempts reset, a partial record
        queued for deletion in the same transaction). False, and nothing changed, unless the
        job is still failed so (``ingestd retry`` may have come first)."""
        size, mtime_ns, inode, device = snapshot
        now = time.time()
        async with self.transaction():
            row = await self._conn.fetchone(
                "SELECT record_id FROM jobs "
                "WHERE id=? AND state='failed' AND fail_reason='source_missing'",
                (job_id,),
            )
            if row is None:
                return False
            if row[0]:
                await self._queue_deletion(str(row[0]), job_id, "source_missing", now)
            await self._conn.execute(
                "UPDATE jobs SET state='waiting', size=?, mtime_ns=?, inode=?, device=?, "
                "record_id=NULL, video_id=NULL, bytes_acked=0, sha256=NULL, attempts=0, "
                "next_attempt_at=0, create_started_at=NULL, confirm_delay=NULL, "
                "whole_file=0, restarts=0, fail_reason=NULL, fail_detail=NULL, "
                "wait_reason='the file is back', force=0, updated_at=? WHERE id=?",
                (size, mtime_ns, inode, device, now, job_id),
            )
        return True

    async def retake_unowned(self) -> list[int]:
        """Done jobs left alone because another live job owned their file (``left_alone``
        ``owned``), whose file no live job owns any more: the step is due again. One whose
        after-upload action never ran (no ``final_path``, nothing cleaned) is pending again;
        one held back from ``keep_for`` is no longer held back. Returns their ids."""
        marks = ",".join("?" * len(LIVE))
        rows = await self._conn.fetchall(
            "SELECT id FROM jobs AS j WHERE state='done' AND left_alone='owned' AND NOT EXISTS "
            "(SELECT 1 FROM jobs AS o WHERE o.path=COALESCE(j.final_path, j.path) "
            f"AND o.id<>j.id AND o.state IN ({marks})) ORDER BY id",
            [s.value for s in LIVE],
        )
        ids = [int(row[0]) for row in rows]
        for first in range(0, len(ids), _MAX_VARIABLES):
            part = ids[first : first + _MAX_VARIABLES]
            await self._conn.execute(
                "UPDATE jobs SET left_alone=NULL, after_done=CASE WHEN final_path IS NULL "
                "AND cleaned_at IS NULL THEN 0 ELSE after_done END, updated_at=? "
                f"WHERE left_alone='owned' AND id IN ({','.join('?' * len(part))})",
                (time.time(), *part),
            )
        return ids

    async def restart_upload(self, job: Job, reason: str, *, whole_file: bool) -> bool:
        """Drop the job's record (queued for deletion) so the next attempt starts anew.

        Only while the job still has ``job``'s record: False (nothing changed) if it
        has moved on to another one meanwhile.
        """
        now = time.time()
        async with self.transaction():
            cursor = await self._conn.execute(
                "UPDATE jobs SET state='queued', record_id=NULL, video_id=NULL, "
                "bytes_acked=0, create_started_at=NULL, confirm_delay=NULL, whole_file=?, "
                "restarts=restarts+1, next_attempt_at=0, updated_at=? "
                "WHERE id=? AND record_id IS ?",
                (1 if whole_file else 0, now, job.id, job.record_id),
            )
            if not cursor.rowcount:
                return False
            if job.record_id:
                await self._queue_deletion(job.record_id, job.id, reason, now)
        return True

    async def fail(
        self, job: Job, reason: str, detail: str, *, delete_record: bool = False
    ) -> None:
        """Mark the job failed; with ``delete_record`` its partial record is queued for deletion."""
        now = time.time()
        async with self.transaction():
            if delete_record and job.record_id:
                await self._queue_deletion(job.record_id, job.id, reason, now)
                await self._conn.execute(
                    "UPDATE jobs SET record_id=NULL, video_id=NULL, bytes_acked=0 WHERE id=?",
                    (job.id,),
                )
            await self._conn.execute(
                "UPDATE jobs SET state='failed', fail_reason=?, fail_detail=?, updated_at=? "
                "WHERE id=?",
                (reason, detail, now, job.id),
            )

    async def forget(self, job_id: int) -> None:
        """Remove a job that never reached the server (its file vanished while waiting)."""
        await self._conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    async def retry(self, job_ids: Sequence[int] | None, *, force: bool) -> list[int]:
        """Re-queue failed jobs (all when ``job_ids`` is None).

        ``force`` also takes waiting and skipped ones: they go back to ``waiting``
        marked ``force``, and the settle loop queues them at once, skipping the
        finished checks and the duplicate check.
        """
        states = ["failed", "waiting", "skipped"] if force else ["failed"]
        marks = ",".join("?" * len(states))
        query = f"SELECT id, state, record_id, create_started_at FROM jobs WHERE state IN ({marks})"
        args: list[Any] = list(states)
        if job_ids is not None:
            query += f" AND id IN ({','.join('?' * len(job_ids)) or 'NULL'})"  # none: no match
            args.extend(job_ids)
        now = time.time()
        retried: list[int] = []
        async with self.transaction():
            rows = await self._conn.fetchall(query, args)
            for job_id, current, record_id, create_started_at in rows:
                state = (
                    "uploading" if record_id else ("creating" if create_started_at else "queued")
                )
                if current in ("waiting", "skipped"):
                    state = "waiting"
                await self._conn.execute(
                    "UPDATE jobs SET state=?, attempts=0, next_attempt_at=0, fail_reason=NULL, "
                    "fail_detail=NULL, force=?, updated_at=? WHERE id=?",
                    (state, 1 if force else 0, now, job_id),
                )
                retried.append(int(job_id))
        return retried

    # --- the durable queue of partial records to delete ----------------------------------

    async def _queue_deletion(
        self, record_id: str, job_id: int | None, reason: str, now: float
    ) -> None:
        self.deletions_queued += 1
        self._deletions_at_most += 1  # counted before the INSERT: never too few
        await self._conn.execute(
            "INSERT OR IGNORE INTO deletions(record_id, job_id, reason, created_at) "
            "VALUES(?,?,?,?)",
            (record_id, job_id, reason, now),
        )

    async def queue_deletion(self, record_id: str, job_id: int | None, reason: str) -> None:
        await self._queue_deletion(record_id, job_id, reason, time.time())

    async def due_deletions(self, now: float) -> list[Deletion]:
        rows = await self._conn.fetchall(
            "SELECT * FROM deletions WHERE next_attempt_at<=? ORDER BY id", (now,)
        )
        return [Deletion.from_row(row) for row in rows]

    async def deletions_for(self, job_id: int) -> list[Deletion]:
        """One job's partial records still to delete (its next record must wait for them)."""
        if not self._deletions_at_most:
            return []
        rows = await self._conn.fetchall(
            "SELECT * FROM deletions WHERE job_id=? ORDER BY id", (job_id,)
        )
        return [Deletion.from_row(row) for row in rows]

    async def pending_deletions(self) -> int:
        row = await self._conn.fetchone("SELECT COUNT(*) FROM deletions")
        return int(row[0]) if row else 0

    async def deletion_done(self, deletion_id: int) -> None:
        cursor = await self._conn.execute("DELETE FROM deletions WHERE id=?", (deletion_id,))
        self._deletions_at_most = max(0, self._deletions_at_most - cursor.rowcount)

    async def deletion_failed(self, deletion_id: int, next_at: float, error: str) -> None:
        await self._conn.execute(
            "UPDATE deletions SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?",
            (next_at, error, deletion_id),
        )

    # --- records left alone that may be orphans of ours ---------------------------------

    async def note_orphan(self, record_id: str, job_id: int, name: str, why: str) -> None:
        """Remember a record that may be an empty leftover of ours but was not deleted."""
        await self._conn.execute(
            "INSERT INTO suspected_orphans(record_id, job_id, name, why, noted_at) "
            "VALUES(?,?,?,?,?) ON CONFLICT(record_id) DO UPDATE SET "
            "job_id=excluded.job_id, why=excluded.why, noted_at=excluded.noted_at",
            (record_id, job_id, name, why, time.time()),
        )

    async def suspected_orphans(self) -> list[dict[str, Any]]:
        """The records :meth:`note_orphan` noted, oldest first (none before schema 3)."""
        table = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='suspected_orphans'"
        if await self._conn.fetchone(table) is None:  # read-only open of an older ledger
            return []
        rows = await self._conn.fetchall(
            "SELECT record_id, job_id, name, why, noted_at FROM suspected_orphans ORDER BY noted_at"
        )
        return [dict(row) for row in rows]

    # --- transactions ----------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        """``async with ledger.transaction():`` - BEGIN IMMEDIATE ... COMMIT (or ROLLBACK)."""
        return _Transaction(self._conn)


class _Transaction:
    def __init__(self, conn: _Guarded) -> None:
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
_DAMAGE_CODES = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_WRITE_FAILURES = {
    _SQLITE_FULL: "the ledger's disk is full (or the ledger reached its size limit)",
    _SQLITE_READONLY: "the ledger is read-only (read-only file system, or no write permission)",
    _SQLITE_IOERR: "the disk under the ledger reported an I/O error",
    _SQLITE_CANTOPEN: "the ledger's files cannot be opened for writing (permissions?)",
    _SQLITE_PERM: "the ledger may not be written (permissions)",
}


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


class _Guarded:
    """The one connection, with every statement passing through one place.

    A write that fails for want of space or permission becomes
    :class:`LedgerUnwritable` (and the ledger notes it) instead of a plain
    ``sqlite3.OperationalError`` that each caller would have to recognise;
    damage found on the way (SQLITE_CORRUPT, SQLITE_NOTADB) becomes
    :class:`LedgerDamaged`, which says how to recover.
    """

    def __init__(self, ledger: Ledger, conn: aiosqlite.Connection) -> None:
        self._ledger = ledger
        self._conn = conn
        # One connection, many tasks: while one task's transaction is open, another
        # task's statements wait. Else its BEGIN fails ("cannot start a transaction
        # within a transaction") and its plain writes would join the open transaction.
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        # Statements other than SELECT and PRAGMA sent so far: Ledger.counts() knows by it
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
        code = _primary_code(exc) or 0
        if code in _DAMAGE_CODES:
            return LedgerDamaged(self._ledger.path, str(exc))
        what = _WRITE_FAILURES.get(code)
        if what is None:
            return None
        problem = f"{what}: {self._ledger.path}: {exc}"
        self._ledger._note_write_failure(problem)
        return LedgerUnwritable(problem)


def sqlite_uri(path: Path, *, readonly: bool) -> str:
    """``file:`` URI of ``path``, percent-escaped: a ``?``, ``#`` or ``%`` in a folder's name
    would otherwise end the path or start a query (issue 11, finding 13)."""
    return Path(os.path.abspath(path)).as_uri() + ("?mode=ro" if readonly else "")


def _refuse_lost_ledger(path: Path) -> None:
    """A missing or empty ledger is a first start - unless backups of an earlier one exist.

    Starting afresh beside them would upload every file again: the earlier
    ledger was lost (deleted, truncated by a file system repair) and should
    be restored instead.
    """
    try:
        fresh = path.stat().st_size == 0
    except FileNotFoundError:
        fresh = True
    if not fresh:
        return
    backups = existing_backups(path)
    if backups:
        raise LedgerDamaged(
            path,
            f"but {len(backups)} backup(s) of an earlier ledger lie beside it, the newest "
            f"{backups[-1].name}; to start afresh on purpose, move them away",
            what="is empty" if path.exists() else "is missing",
        )


def existing_backups(path: Path) -> list[Path]:
    """Backups of the ledger at ``path`` (``LEDGER.backup-YYYYMMDD-HHMMSS``), oldest first."""
    prefix = path.name + BACKUP_INFIX
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    stamps = [n for n in names if n.startswith(prefix) and _is_stamp(n[len(prefix) :])]
    return [path.with_name(n) for n in sorted(stamps)]


def _is_stamp(text: str) -> bool:
    """``YYYYMMDD-HHMMSS``."""
    return len(text) == 15 and text[8] == "-" and (text[:8] + text[9:]).isdigit()
