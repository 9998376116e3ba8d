"""The ledger's read queries: the many shapes in which intake, the workers, the confirmer,
health and ``ingestd status`` ask about jobs (mixed into the SQLite ledger)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ingestd.errors import LedgerError
from ingestd.ledger.connection import MAX_VARIABLES, Connected, marks
from ingestd.ledger.model import (
    DISPATCHABLE,
    JOB_COLUMNS,
    LIVE,
    NOT_SENT,
    STATES,
    Job,
    Known,
    State,
    Unsent,
    Waiting,
)
from ingestd.ledger.schema import DISPATCHABLE_SQL, TWIN_STATES_SQL

# LIMIT for none: both backends take it (SQLite's -1 is not PostgreSQL's).
NO_LIMIT = 2**62


class JobQueries(Connected):
    _dispatch_index: bool  # jobs_dispatch exists (see schema.INDEXES)
    # jobs_after_pending and jobs_owned exist (SQLite: see schema.INDEXES). Named in the
    # queries, as SQLite, not knowing how few rows they hold, would walk jobs_state.
    _housekeeping_indexes = False
    _counts: tuple[tuple[int, int], dict[str, int]] | None  # see counts()

    async def jobs_in(
        self,
        states: Iterable[State],
        *,
        order: str = "id",
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[Job]:
        """The jobs in ``states``, ordered by the column ``order`` (and then id); the first
        ``limit`` only when given (a page shows a few of perhaps 100,000 queued)."""
        if order not in JOB_COLUMNS:
            raise LedgerError(f"no job field {order!r} to order by")
        names = [s.value for s in states]
        way = "DESC" if newest_first else "ASC"
        rows = await self._conn.fetchall(
            f"SELECT * FROM jobs WHERE state IN ({marks(names)}) ORDER BY {order} {way}, id "
            "LIMIT ?",
            [*names, NO_LIMIT if limit is None else max(0, limit)],
        )
        return [Job.from_row(row) for row in rows]

    async def missing_sources(self) -> set[int]:
        """The jobs failed because their file disappeared before its upload finished
        (``source_missing``): the intake takes each up again once its file is back."""
        rows = await self._conn.fetchall(
            "SELECT id FROM jobs WHERE state='failed' AND fail_reason='source_missing'"
        )
        return {int(row[0]) for row in rows}

    async def waiting(self) -> list[Waiting]:
        """The ``waiting`` jobs, oldest first."""
        rows = await self._conn.fetchall(
            "SELECT id, path, force, size, mtime_ns, inode, device, root FROM jobs "
            "WHERE state='waiting' ORDER BY id"
        )
        return [Waiting(r[0], r[1], bool(r[2]), (r[3], r[4], r[5], r[6]), r[7]) for r in rows]

    async def known_snapshots(self) -> dict[str, Known]:
        """The newest job of every path: its id, file snapshot and state (for scans)."""
        return await self._snapshots(
            "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs"
        )

    async def newest_identities(self, after_id: int, limit: int) -> Sequence[Sequence[Any]]:
        """Up to ``limit`` jobs above id ``after_id``, by id, each the newest job of its path:
        (id, path, size, mtime_ns, inode, state). The scans' cache of settled files is
        loaded from these, a page at a time (intake/settled.py): a million jobs need never
        be in memory at once. By id, not by state: SQLite would walk ``jobs_state`` for
        every page."""
        rows = await self._conn.fetchall(
            "SELECT id, path, size, mtime_ns, inode, state FROM jobs AS j WHERE id > ? AND "
            "NOT EXISTS (SELECT 1 FROM jobs AS n WHERE n.path = j.path AND n.id > j.id) "
            "ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return rows  # as they come: a million rows are not copied into tuples

    async def live_snapshots(self) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the jobs not done or skipped (at most one a path).

        A path's live job is always its newest: a new job for a path is only made
        once the old one is done or skipped. Index lookups, so cheap however many
        done jobs the ledger holds (intake/scan.py keeps those in memory between scans).
        """
        marks = ",".join("?" * len(LIVE))
        return await self._snapshots(
            "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs "
            f"WHERE state IN ({marks})",
            [s.value for s in LIVE],
        )

    async def snapshots_of(self, job_ids: Iterable[int]) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the jobs ``job_ids`` (gone ones are left out)."""
        return await self._snapshots_where("id", sorted(set(job_ids)))

    async def snapshots_for_paths(self, paths: Iterable[str]) -> dict[str, Known]:
        """As :meth:`known_snapshots`, for the newest job of each of ``paths`` that has one."""
        return await self._snapshots_where("path", sorted(set(paths)))

    async def states_of(self, job_ids: Iterable[int]) -> dict[int, State]:
        """The state of each of ``job_ids`` still in the ledger (``run --once`` watches its
        scope by it: one query a batch, no Job objects)."""
        wanted = sorted(set(job_ids))
        found: dict[int, State] = {}
        for first in range(0, len(wanted), MAX_VARIABLES):
            part = wanted[first : first + MAX_VARIABLES]
            rows = await self._conn.fetchall(
                f"SELECT id, state FROM jobs WHERE id IN ({marks(part)})", part
            )
            found.update((int(row[0]), State(row[1])) for row in rows)
        return found

    async def _snapshots_where(self, column: str, wanted: Sequence[Any]) -> dict[str, Known]:
        """The snapshots of the jobs whose ``column`` is one of ``wanted``, in batches that
        keep within SQLite's limit on bound values."""
        found: dict[str, Known] = {}
        for first in range(0, len(wanted), MAX_VARIABLES):
            part = wanted[first : first + MAX_VARIABLES]
            found.update(
                await self._snapshots(
                    "SELECT id, path, size, mtime_ns, inode, device, state FROM jobs "
                    f"WHERE {column} IN ({','.join('?' * len(part))})",
                    part,
                )
            )
        return found

    async def _snapshots(self, query: str, parameters: Sequence[Any] = ()) -> dict[str, Known]:
        # One fetchall: iterating a cursor would cost a thread hop every 64 rows.
        rows = await self._conn.fetchall(query + " ORDER BY id", parameters)
        known: dict[str, Known] = {}
        states = STATES
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
            f"SELECT * FROM jobs {index}WHERE state IN ({DISPATCHABLE_SQL}) "
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
            f"SELECT * FROM jobs WHERE fingerprint=? AND id<>? AND state IN ({TWIN_STATES_SQL}) "
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
        for first in range(0, len(wanted), MAX_VARIABLES):
            part = wanted[first : first + MAX_VARIABLES]
            for row in await self._conn.fetchall(
                f"SELECT * FROM jobs WHERE fingerprint IN ({','.join('?' * len(part))}) AND "
                f"state IN ({TWIN_STATES_SQL})",
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
        index = "INDEXED BY jobs_after_pending " if self._housekeeping_indexes else ""
        rows = await self._conn.fetchall(
            f"SELECT * FROM jobs {index}WHERE state='done' AND after_done=0 ORDER BY id"
        )
        return [Job.from_row(row) for row in rows]

    async def failed_not_set_aside(self) -> list[Job]:
        """Failed jobs whose file was never set aside (``failed_to``: a crash came between
        the failure and the move). Not those whose file had gone (``source_missing``: it
        is taken up again when back) nor ``not_ready`` ones (their source stays put)."""
        rows = await self._conn.fetchall(
            "SELECT * FROM jobs WHERE state='failed' AND final_path IS NULL "
            "AND left_alone IS NULL AND fail_reason NOT IN ('source_missing', 'not_ready') "
            "ORDER BY id"
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
        # "id NOT IN ()" is SQLite's alone (PostgreSQL refuses it): no clause when none is busy.
        skip = f"AND id NOT IN ({','.join('?' * len(busy_ids))})" if busy_ids else ""
        row = await self._conn.fetchone(
            f"SELECT COUNT(*) FROM jobs WHERE state IN ({','.join('?' * len(ready))}) {skip}",
            [*ready, *busy_ids],
        )
        queued = int(row[0]) if row else 0
        row = await self._conn.fetchone(
            f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY discovered_at, id LIMIT 1",
            not_sent,
        )
        return Unsent(files, queued, Job.from_row(row) if row else None)

    async def last_upload_at(self) -> float | None:
        """When the last upload's final byte was acknowledged (None: never); read once at
        start-up, so one pass over the rows is cheap enough without an index."""
        row = await self._conn.fetchone("SELECT MAX(uploaded_at) FROM jobs")
        return None if row is None or row[0] is None else float(row[0])

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
