"""What both ledger backends share: jobs, meta and heartbeat over the ``Guarded`` interface.

The statements here (and in ``transitions.py``, ``queries.py``, ``retention.py``,
``deletions.py``) are written once, in the SQL both SQLite and PostgreSQL speak,
with ``?`` placeholders; the PostgreSQL connection (``postgres/connection.py``)
translates the little that differs. A backend adds opening, closing, the write
probe and what only it can do (``store.py``: SQLite; ``postgres/store.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ingestd.errors import LedgerError
from ingestd.ledger.backup import RESTORED_AT, RESTORED_BACKUP_TIME
from ingestd.ledger.connection import MAX_VARIABLES, marks
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


class LedgerCore(Transitions, JobQueries, Retention):
    """The backend-neutral part of a ledger (see the module docstring)."""

    # A one-machine ledger: no other daemon may take a job, so a job's claim never ends.
    shared = False
    node: str | None = None
    path: Path
    write_problem: str | None
    writable: asyncio.Event
    write_failed: asyncio.Event

    @property
    def where(self) -> str:
        """What messages call this ledger: its file, or a shared ledger's host and database."""
        return str(self.path)

    def _note_write_failure(self, problem: str) -> None:
        self.write_problem = problem
        self.writable.clear()
        self.write_failed.set()

    def _writes_work(self) -> bool:
        """A write probe succeeded: the ledger takes writes again."""
        self.write_problem = None
        self.writable.set()
        return True

    async def outdated(self) -> str | None:
        """Why this ingestd must stop using the ledger now (a shared ledger migrated past
        its schema version); None: it may go on. A one-machine ledger never is."""
        return None

    def lease_left(self, job_id: int) -> float:
        """Seconds this daemon may still act on ``job_id`` before another may take it
        (infinite on a one-machine ledger; see postgres/claims.py)."""
        return math.inf

    async def release(self, job_ids: Iterable[int], *, sent: bool = False) -> None:
        """This daemon is done with these jobs for now: another may take them (a no-op on
        a one-machine ledger)."""

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
        return heartbeat_from(text) if text else None

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
        index = "INDEXED BY jobs_owned " if self._housekeeping_indexes else ""
        rows = await self._conn.fetchall(
            f"SELECT id FROM jobs AS j {index}WHERE state='done' AND left_alone='owned' "
            "AND NOT EXISTS (SELECT 1 FROM jobs AS o WHERE o.path=COALESCE(j.final_path, j.path) "
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


def heartbeat_from(text: str) -> Heartbeat | None:
    """A heartbeat's JSON as a :class:`Heartbeat` (None: written by another version)."""
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
