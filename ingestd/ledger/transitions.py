"""Every change of a job's state, by name: the one place that writes ``jobs.state``.

Each transition names the states it may leave and checks them in the same
statement that moves the job (compare-and-set: ``UPDATE ... WHERE id=? AND
state IN (...)``); one given the caller's :class:`Job` also requires the job to
be still as the caller saw it (its state and its record). Each commits before
it returns and says whether it happened: False means the job had moved on
(another task changed it meanwhile) and nothing was written.

State table: each state, the transitions that enter it, and from where.

============  =====================  ==============================================
state         transition             from
============  =====================  ==============================================
waiting       add_job, add_jobs      (a new job: a file seen for the first time)
              source_changed         queued, creating, uploading, confirming, failed
              source_returned        failed (source_missing; its file is back)
              retry (force)          waiting, skipped
queued        queue                  waiting
              restart_upload         queued, creating, uploading, confirming
              record_gone            queued, creating, uploading
              retry                  failed (no record, no create begun)
creating      begin_create           queued, creating, uploading
              retry                  failed (a create-upload had begun)
uploading     record_created         creating
              chunk_acked            uploading (the same record)
              resend                 confirming
              retry                  failed (with its record)
confirming    sent                   uploading
              adopt (not ready)      queued, creating, uploading
done          confirmed              confirming
              adopt (ready)          queued, creating, uploading
failed        fail                   queued, creating, uploading, confirming
skipped       skip_duplicate         waiting
(deleted)     forget                 waiting
============  =====================  ==============================================

A partial record that a transition abandons (``source_changed``,
``restart_upload``, ``fail`` with ``delete_record``, a ``record_created`` that
came too late) is queued for deletion in the same transaction, so no orphan
survives a crash.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ingestd.ledger.connection import Write, marks
from ingestd.ledger.deletions import DeletionQueue
from ingestd.ledger.model import DISPATCHABLE, Job, Queueing, Snapshot, State

# What each transition may leave (the table above).
_CHANGED_FROM = (*DISPATCHABLE, State.CONFIRMING, State.FAILED)
_FAIL_FROM = (*DISPATCHABLE, State.CONFIRMING)
_RESTART_FROM = (*DISPATCHABLE, State.CONFIRMING)
# ``record_id IS ?`` left out: the transition does not depend on the job's record.
_ANY_RECORD = object()


def _new_version(snapshot: Snapshot, reason: str) -> dict[str, Any]:
    """A job's fields for a new version of its file: nothing of the old upload is kept."""
    size, mtime_ns, inode, device = snapshot
    return {
        "size": size,
        "mtime_ns": mtime_ns,
        "inode": inode,
        "device": device,
        "record_id": None,
        "video_id": None,
        "bytes_acked": 0,
        "sha256": None,
        "attempts": 0,
        "next_attempt_at": 0,
        "create_started_at": None,
        "confirm_delay": None,
        "whole_file": 0,
        "restarts": 0,
        "fail_reason": None,
        "fail_detail": None,
        "wait_reason": reason,
        "force": 0,
    }


class Transitions(DeletionQueue):
    """The named transitions (mixed into the SQLite ledger; see the table above)."""

    node: str | None  # this daemon's name in a shared ledger (None: one machine)

    async def _move(
        self,
        job_id: int,
        sources: Sequence[State],
        to: State,
        changes: Mapping[str, Any],
        *,
        record_id: object = _ANY_RECORD,
        now: float | None = None,
        counted: str | None = None,
        then: Write | None = None,
        otherwise: Write | None = None,
    ) -> bool:
        """``UPDATE`` one job to ``to`` if it is in one of ``sources`` (and has ``record_id``);
        ``counted``: a column that goes up by one with it; ``then`` (``otherwise``): a write
        to make with it in the same transaction if it moved the job (if it did not).

        Inside a transaction of the caller's, or else one write committed on its own
        (one trip to the ledger's thread, follow-up and COMMIT included).
        """
        if not sources:
            return False
        assignments = "".join(f"{key}=?, " for key in changes)
        if counted is not None:
            assignments += f"{counted}={counted}+1, "
        sql = (
            f"UPDATE jobs SET state=?, {assignments}updated_at=? "
            f"WHERE id=? AND state IN ({marks(sources)})"
        )
        stamp = time.time() if now is None else now
        values: list[Any] = [to.value, *changes.values(), stamp, job_id]
        values.extend(s.value for s in sources)
        if record_id is not _ANY_RECORD:
            sql += " AND record_id IS ?"
            values.append(record_id)
        written = await self._conn.write(Write(sql, values, then=then, otherwise=otherwise))
        return bool(written.rowcount)

    @staticmethod
    def _as_seen(job: Job, allowed: Sequence[State]) -> tuple[State, ...]:
        """The state the caller saw ``job`` in, if the transition may leave it (else none)."""
        return (job.state,) if job.state in allowed else ()

    # --- intake: waiting files ---------------------------------------------------------------

    async def forget(self, job_id: int) -> bool:
        """Remove a waiting job that never reached the server (its file vanished)."""
        cursor = await self._conn.execute(
            "DELETE FROM jobs WHERE id=? AND state=?", (job_id, State.WAITING.value)
        )
        return bool(cursor.rowcount)

    async def skip_duplicate(
        self, job_id: int, snapshot: Snapshot, fingerprint: str, sha256: str | None, why: str
    ) -> bool:
        """waiting -> skipped: the same content is already on the server. The version judged
        is recorded, or the next scan takes it for a changed file (a new job)."""
        size, mtime_ns, inode, device = snapshot
        changes = {
            "size": size,
            "mtime_ns": mtime_ns,
            "inode": inode,
            "device": device,
            "fingerprint": fingerprint,
            "sha256": sha256,
            "wait_reason": why,
        }
        return await self._move(job_id, (State.WAITING,), State.SKIPPED, changes)

    async def queue(self, files: Sequence[Queueing]) -> int:
        """waiting -> queued for each finished file, all in one transaction (one statement,
        one trip to the ledger's thread); returns how many were still waiting and moved."""
        if not files:
            return 0
        now = time.time()
        rows = [(print_, *snap, now, job_id, State.WAITING.value) for job_id, snap, print_ in files]
        written = await self._conn.write(
            Write(
                "UPDATE jobs SET state='queued', fingerprint=?, size=?, mtime_ns=?, inode=?, "
                "device=?, wait_reason=NULL, next_attempt_at=0, updated_at=? "
                "WHERE id=? AND state=?",
                rows,
                many=True,
            )
        )
        return int(written.rowcount)

    async def source_changed(self, job: Job, snapshot: Snapshot, reason: str) -> bool:
        """The file changed before ``done``: the same job goes back to ``waiting`` for the
        new version; its partial record (if any) is queued for deletion with it."""
        now = time.time()
        changes = _new_version(snapshot, reason)
        sources = self._as_seen(job, _CHANGED_FROM)
        drop = self._deletion(job.record_id, job.id, reason, now) if job.record_id else None
        moved = await self._move(
            job.id, sources, State.WAITING, changes, record_id=job.record_id, now=now, then=drop
        )
        if drop is not None:
            self._deletion_ran(moved)
        return moved

    async def source_returned(self, job_id: int, snapshot: Snapshot) -> bool:
        """A job failed ``source_missing`` whose file is there again: the same job takes it,
        back to ``waiting`` as in :meth:`source_changed` (attempts reset, a partial record
        queued for deletion in the same transaction). False, and nothing changed, unless the
        job is still failed so (``ingestd retry`` may have come first)."""
        now = time.time()
        async with self.transaction():
            row = await self._conn.fetchone(
                "SELECT record_id FROM jobs "
                "WHERE id=? AND state='failed' AND fail_reason='source_missing'",
                (job_id,),
            )
            if row is None:
                return False
            changes = _new_version(snapshot, "the file is back")
            moved = await self._move(job_id, (State.FAILED,), State.WAITING, changes, now=now)
            if moved and row[0]:
                await self._queue_deletion(str(row[0]), job_id, "source_missing", now)
        return moved

    # --- the worker: record and bytes --------------------------------------------------------

    async def begin_create(
        self,
        job: Job,
        record_name: str,
        create_started_at: float,
        upload_started_at: float | None = None,
    ) -> bool:
        """-> creating, committed before the create-upload request (whose record a crash
        may leave behind: the next attempt looks for it under ``record_name``)."""
        changes: dict[str, Any] = {
            "record_name": record_name,
            "create_started_at": create_started_at,
        }
        if upload_started_at is not None:
            changes["upload_started_at"] = upload_started_at
        sources = self._as_seen(job, DISPATCHABLE)
        return await self._move(job.id, sources, State.CREATING, changes, record_id=job.record_id)

    async def record_created(
        self, job_id: int, record_id: str, video_id: str, chunk_size: int | None
    ) -> bool:
        """creating -> uploading into the record the server just made, before its first
        chunk. Too late (the job moved on): the new record is queued for deletion."""
        changes = {
            "record_id": record_id,
            "video_id": video_id,
            "bytes_acked": 0,
            "chunk_size": chunk_size,
        }
        now = time.time()
        drop = self._deletion(record_id, job_id, "job moved on at create", now)
        moved = await self._move(
            job_id,
            (State.CREATING,),
            State.UPLOADING,
            changes,
            record_id=None,
            now=now,
            otherwise=drop,
        )
        self._deletion_ran(not moved)
        return moved

    async def chunk_acked(self, job: Job, bytes_acked: int) -> bool:
        """uploading -> uploading: the server holds the bytes up to ``bytes_acked``."""
        changes = {"bytes_acked": bytes_acked, "attempts": 0}
        return await self._move(
            job.id, (State.UPLOADING,), State.UPLOADING, changes, record_id=job.record_id
        )

    async def sent(self, job: Job, sha256: str, now: float, confirm_at: float) -> bool:
        """uploading -> confirming: every byte is acknowledged (the last chunk with it)."""
        changes = {
            "bytes_acked": job.size,
            "sha256": sha256,
            "uploaded_at": now,
            "attempts": 0,
            "confirm_delay": None,
            "next_attempt_at": confirm_at,
            "uploaded_by": self.node,
        }
        return await self._move(
            job.id, (State.UPLOADING,), State.CONFIRMING, changes, record_id=job.record_id
        )

    async def restart_upload(self, job: Job, reason: str, *, whole_file: bool) -> bool:
        """-> queued without the job's record (queued for deletion): the next attempt
        starts anew. Only while the job still has ``job``'s record."""
        now = time.time()
        changes = {
            "record_id": None,
            "video_id": None,
            "bytes_acked": 0,
            "create_started_at": None,
            "confirm_delay": None,
            "whole_file": 1 if whole_file else 0,
            "next_attempt_at": 0,
        }
        sources = self._as_seen(job, _RESTART_FROM)
        drop = self._deletion(job.record_id, job.id, reason, now) if job.record_id else None
        moved = await self._move(
            job.id,
            sources,
            State.QUEUED,
            changes,
            record_id=job.record_id,
            now=now,
            counted="restarts",
            then=drop,
        )
        if drop is not None:
            self._deletion_ran(moved)
        return moved

    async def record_gone(self, job: Job) -> bool:
        """-> queued without a record: a restored ledger's record is no longer on the server
        (nothing to delete)."""
        changes = {"record_id": None, "video_id": None, "bytes_acked": 0}
        sources = self._as_seen(job, DISPATCHABLE)
        return await self._move(job.id, sources, State.QUEUED, changes, record_id=job.record_id)

    async def adopt(
        self,
        job: Job,
        record_id: str,
        video_id: str | None,
        record_name: str,
        sha256: str,
        *,
        ready: bool,
    ) -> bool:
        """-> done (``ready``) or confirming: after a restore, a record on the server turned
        out to be this job's upload."""
        now = time.time()
        changes: dict[str, Any] = {
            "record_id": record_id,
            "video_id": video_id,
            "record_name": record_name,
            "sha256": sha256,
            "attempts": 0,
            "fail_reason": None,
            "fail_detail": None,
            "uploaded_at": now,  # for confirming: upload.confirm_timeout counts from here
            "uploaded_by": self.node,
            "confirm_delay": None,
            "next_attempt_at": now,
        }
        if ready:
            changes.update(bytes_acked=job.size, done_at=now)
        else:
            changes.update(bytes_acked=0)  # unknown: a retry after not_ready resends from 0
        to = State.DONE if ready else State.CONFIRMING
        sources = self._as_seen(job, DISPATCHABLE)
        return await self._move(job.id, sources, to, changes, record_id=job.record_id, now=now)

    # --- the confirmer ---------------------------------------------------------------------------

    async def resend(self, job: Job) -> bool:
        """confirming -> uploading into the same record: the server lost the bytes."""
        changes = {"bytes_acked": 0, "next_attempt_at": 0, "sha256": None}
        sources = self._as_seen(job, (State.CONFIRMING,))
        return await self._move(job.id, sources, State.UPLOADING, changes, record_id=job.record_id)

    async def confirmed(self, job: Job, done_at: float, *, kept: bool) -> bool:
        """confirming -> done: the server reports the video ready. ``kept``: the file stays
        where it is, so its after-upload action is done with this same commit."""
        changes: dict[str, Any] = {"done_at": done_at}
        if kept:
            changes.update(after_done=1, final_path=job.path)
        sources = self._as_seen(job, (State.CONFIRMING,))
        return await self._move(job.id, sources, State.DONE, changes, record_id=job.record_id)

    # --- failing, and retrying -------------------------------------------------------------------

    async def fail(
        self, job: Job, reason: str, detail: str, *, delete_record: bool = False
    ) -> bool:
        """-> failed; with ``delete_record`` its partial record is queued for deletion."""
        now = time.time()
        changes: dict[str, Any] = {"fail_reason": reason, "fail_detail": detail}
        drop = None
        if delete_record and job.record_id is not None:
            changes.update(record_id=None, video_id=None, bytes_acked=0)
            drop = self._deletion(job.record_id, job.id, reason, now)
        sources = self._as_seen(job, _FAIL_FROM)
        moved = await self._move(
            job.id, sources, State.FAILED, changes, record_id=job.record_id, now=now, then=drop
        )
        if drop is not None:
            self._deletion_ran(moved)
        return moved

    async def retry(self, job_ids: Sequence[int] | None, *, force: bool) -> list[int]:
        """Re-queue failed jobs (all when ``job_ids`` is None); returns the ids retried.

        A failed job goes back to where it stood: ``uploading`` with its record,
        ``creating`` if a create-upload had begun, else ``queued``. ``force`` also
        takes waiting and skipped ones: they go back to ``waiting`` marked
        ``force``, and the settle loop queues them at once, skipping the finished
        checks and the duplicate check.
        """
        states = [State.FAILED, State.WAITING, State.SKIPPED] if force else [State.FAILED]
        query = (
            "SELECT id, state, record_id, create_started_at FROM jobs "
            f"WHERE state IN ({marks(states)})"
        )
        args: list[Any] = [s.value for s in states]
        if job_ids is not None:
            query += f" AND id IN ({marks(job_ids) or 'NULL'})"  # none: no match
            args.extend(job_ids)
        now = time.time()
        retried: list[int] = []
        changes = {
            "attempts": 0,
            "next_attempt_at": 0,
            "fail_reason": None,
            "fail_detail": None,
            "force": 1 if force else 0,
        }
        async with self.transaction():
            for job_id, current, record_id, create_started_at in await self._conn.fetchall(
                query, args
            ):
                to = State.UPLOADING if record_id else State.QUEUED
                if not record_id and create_started_at:
                    to = State.CREATING
                if current in (State.WAITING.value, State.SKIPPED.value):
                    to = State.WAITING
                if await self._move(int(job_id), (State(current),), to, changes, now=now):
                    retried.append(int(job_id))
        return retried
