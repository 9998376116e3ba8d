"""The job ledger on SQLite: WAL mode with ``synchronous=FULL``, via aiosqlite.

The single source of truth about what has been done. Every state change is
committed before the action that depends on it: "creating" before the
create-upload POST, the record id before the first chunk, ``bytes_acked``
after each acknowledged chunk (``transitions.py`` names them all). A SIGKILL
therefore costs at most the chunk in flight. The schema carries a version and
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
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiosqlite

from ingestd.disk.private import create_private, make_private_folders
from ingestd.errors import LedgerDamaged, LedgerError, LedgerUnwritable
from ingestd.ledger import schema
from ingestd.ledger.backup import RESTORED_AT, RESTORED_BACKUP_TIME, refuse_lost_ledger
from ingestd.ledger.connection import (
    DAMAGE_CODES,
    MAX_VARIABLES,
    Guarded,
    marks,
    on_read_only_fs,
    primary_code,
    sqlite_uri,
)
from ingestd.ledger.model import (
    JOB_COLUMNS,
    LIVE,
    FolderReport,
    Heartbeat,
    Job,
    LastRestore,
    Snapshot,
    State,
)
from ingestd.ledger.queries import JobQueries
from ingestd.ledger.retention import Retention
from ingestd.ledger.transitions import Transitions

# The meta key of the daemon's heartbeat (write_heartbeat).
HEARTBEAT = "heartbeat"
# How much the write probe makes the ledger grow (then shrink) to prove it can.
_PROBE_BYTES = 16 * 1024


def _set_clause(changes: Mapping[str, Any], now: float) -> tuple[str, list[Any]]:
    """``col=?, ...`` for an UPDATE of ``changes`` (stamped ``updated_at``), and its values.

    Never the state: that moves only through the named transitions.
    """
    if "state" in changes:
        raise LedgerError("a job's state changes only through a transition (transitions.py)")
    unknown = set(changes) - JOB_COLUMNS
    if unknown:
        raise LedgerError(f"unknown job fields: {sorted(unknown)}")
    stamped = {**changes, "updated_at": now}
    return ", ".join(f"{key}=?" for key in stamped), list(stamped.values())


class SqliteLedger(Transitions, JobQueries, Retention):
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
        self._conn = Guarded(path, conn, self._note_write_failure)

    # --- opening ----------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> SqliteLedger:
        """Open (creating it unless ``readonly``) and migrate the ledger at ``path``.

        Unless ``readonly``, the ledger must pass ``PRAGMA quick_check``
        first: a damaged or foreign file raises :class:`LedgerDamaged` and is
        left exactly as it is. A missing (or empty) file is a first start,
        unless backups of an earlier ledger lie beside it.
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
            ledger._dispatch_index = await schema.prepare(ledger._conn, path, readonly)
            ledger._deletions_at_most = await ledger.pending_deletions()
        except LedgerError:
            await conn.close()
            raise
        except sqlite3.Error as exc:
            await conn.close()
            if primary_code(exc) in DAMAGE_CODES:
                raise LedgerDamaged(path, str(exc)) from None
            hint = "" if os.access(path.parent, os.W_OK) else " (its folder is not writable)"
            raise LedgerError(f"the ledger {path} cannot be used: {exc}{hint}") from None
        return ledger

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

    async def set_folder_states(self, states: Sequence[FolderReport]) -> None:
        """Each watch folder's state as the daemon last saw it, for ``ingestd status``."""
        await self._set_meta("folder_states", json.dumps(list(states)))

    async def folder_states(self) -> list[FolderReport]:
        """:meth:`set_folder_states`' last word (empty: never written)."""
        text = await self.get_meta("folder_states")
        if not text:
            return []
        items: list[FolderReport] = json.loads(text)
        return items

    async def last_restore(self) -> LastRestore | None:
        """What ``ingestd ledger restore`` wrote into this ledger (None: never restored)."""
        restored_at = await self.get_meta(RESTORED_AT)
        backup_time = await self.get_meta(RESTORED_BACKUP_TIME)
        if restored_at is None or backup_time is None:
            return None
        return LastRestore(float(backup_time), float(restored_at))

    async def server_problem(self) -> tuple[str, float] | None:
        """:meth:`set_server_problem`'s last word: the problem and since when, or None."""
        problem = await self.get_meta("server_problem")
        since = await self.get_meta("server_problem_since")
        return (problem, float(since)) if problem and since else None

    async def write_heartbeat(self, beat: Heartbeat) -> None:
        """One ``meta`` row, JSON: no schema change, and an older ingestd ignores it."""
        fields = {**asdict(beat), "problems": list(beat.problems), "folders": dict(beat.folders)}
        await self._set_meta(HEARTBEAT, json.dumps(fields))

    async def heartbeat(self) -> Heartbeat | None:
        text = await self.get_meta(HEARTBEAT)
        if not text:
            return None
        try:
            fields = json.loads(text)
            stopped = fields.get("stopped_at")
            return Heartbeat(
                pid=int(fields["pid"]),
                started_at=float(fields["started_at"]),
                beat_at=float(fields["beat_at"]),
                mode=str(fields["mode"]),
                problems=tuple(str(problem) for problem in fields["problems"]),
                server=str(fields["server"]),
                server_detail=str(fields["server_detail"]),
                folders={str(label): str(state) for label, state in fields["folders"].items()},
                stopped_at=None if stopped is None else float(stopped),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # written by another version: as good as none

    # --- jobs -------------------------------------------------------------------------

    async def add_job(self, *, path: str, root: str, snapshot: Snapshot) -> Job:
        """A new ``waiting`` job: a file seen for the first time (or changed after done)."""
        now = time.time()
        state = State.WAITING
        size, mtime_ns, inode, device = snapshot
        cursor = await self._conn.execute(
            "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, "
            "discovered_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
            (path, root, state.value, size, mtime_ns, inode, device, now, now),
        )
        job_id = cursor.lastrowid
        assert job_id is not None
        return await self.get_job(job_id)

    async def add_jobs(self, *, root: str, files: Sequence[tuple[str, Snapshot]]) -> dict[str, int]:
        """A ``waiting`` job for each (path, snapshot), all in one transaction; returns
        path -> job id.

        For a scan that finds many new files at once: one commit instead of one each.
        """
        if not files:
            return {}
        now = time.time()
        rows = [(path, root, State.WAITING.value, *snap, now, now) for path, snap in files]
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
        """Commit ``changes`` to one job (a single autocommitted, fsynced statement); never
        its state (:class:`LedgerError`): that moves only through a transition."""
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

    async def retake_unowned(self) -> list[int]:
        """Done jobs left alone because another live job owned their file (``left_alone``
        ``owned``), whose file no live job owns any more: the step is due again. One whose
        after-upload action never ran (no ``final_path``, nothing cleaned) is pending again;
        one held back from ``keep_for`` is no longer held back. Returns their ids."""
        rows = await self._conn.fetchall(
            "SELECT id FROM jobs AS j WHERE state='done' AND left_alone='owned' AND NOT EXISTS "
            "(SELECT 1 FROM jobs AS o WHERE o.path=COALESCE(j.final_path, j.path) "
            f"AND o.id<>j.id AND o.state IN ({marks(LIVE)})) ORDER BY id",
            [s.value for s in LIVE],
        )
        ids = [int(row[0]) for row in rows]
        for first in range(0, len(ids), MAX_VARIABLES):
            part = ids[first : first + MAX_VARIABLES]
            await self._conn.execute(
                "UPDATE jobs SET left_alone=NULL, after_done=CASE WHEN final_path IS NULL "
                "AND cleaned_at IS NULL THEN 0 ELSE after_done END, updated_at=? "
                f"WHERE left_alone='owned' AND id IN ({marks(part)})",
                (time.time(), *part),
            )
        return ids


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
