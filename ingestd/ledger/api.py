"""The storage boundary: what the rest of ingestd may ask of the ledger.

Intake, upload, observe, daemon and commands see the ledger only through
:class:`JobLedger` and the model types (``ledger/model.py``); none of them knows
it is SQLite. :func:`open_ledger` is the one place that picks the backend
(``ledger/store.py``); another backend is a new module under ``ledger/`` that
implements these Protocols, including the transitions of ``transitions.py``
with the same compare-and-set rule (a transition moves a job only out of the
states it names, and says whether it did).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ingestd.config.schema import Config
from ingestd.errors import LedgerError
from ingestd.ledger.model import (
    Deletion,
    FolderReport,
    Heartbeat,
    Job,
    Known,
    LastRestore,
    NodeForgotten,
    NodeView,
    OldDone,
    Queueing,
    Snapshot,
    State,
    Unsent,
    Waiting,
)

# What a ledger call may raise: the ledger's own errors, and those of the backend's
# driver that it leaves as they are (a busy database, a bug in a statement).
LEDGER_ERRORS: tuple[type[Exception], ...] = (LedgerError, sqlite3.Error)


class LedgerHandle(Protocol):
    """The ledger as a whole: where it is, whether it takes writes, its flags."""

    path: Path

    @property
    def where(self) -> str:
        """What messages call the ledger: its file, or ``postgresql://HOST/DB``."""

    shared: bool
    """Shared by several daemons (PostgreSQL): jobs are claimed, writes fenced."""
    node: str | None
    """This daemon's name in a shared ledger (None: a one-machine ledger)."""
    write_problem: str | None
    """None while writes work; after a write failed, why (until :meth:`probe_write`)."""
    writable: asyncio.Event
    """Set while writes work."""
    write_failed: asyncio.Event
    """Set at a write failure; the ledger watch clears it."""

    async def probe_write(self) -> bool: ...

    async def outdated(self) -> str | None:
        """Why this ingestd must stop (a shared schema newer than it); None: go on."""

    async def close(self) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_paused(self, paused: bool) -> None: ...

    async def is_paused(self) -> bool: ...

    async def set_server_problem(self, problem: str | None, since: float) -> None: ...

    async def server_problem(self) -> tuple[str, float] | None: ...

    async def set_folder_states(self, states: Sequence[FolderReport]) -> None: ...

    async def folder_states(self) -> list[FolderReport]: ...

    async def write_heartbeat(self, beat: Heartbeat) -> None:
        """Replace the daemon's heartbeat (one per ledger: only the lock holder writes it)."""

    async def heartbeat(self) -> Heartbeat | None:
        """The last heartbeat written; None when there is none or it cannot be read."""

    async def last_restore(self) -> LastRestore | None: ...


class Claims(Protocol):
    """Which daemon works on a job (postgres/claims.py). On a one-machine ledger every job
    is this daemon's for good: ``lease_left`` is infinite and ``release`` does nothing."""

    def lease_left(self, job_id: int) -> float:
        """Seconds this daemon may still act on the job (0: stop, another may take it)."""

    async def release(self, job_ids: Iterable[int], *, sent: bool = False) -> None:
        """Done with these jobs for now: another daemon may take them (``sent``: requests
        were sent for them that may still reach the server: not before a full lease)."""


class JobReads(Protocol):
    """The questions asked about jobs."""

    async def get_job(self, job_id: int) -> Job: ...

    async def find_job(self, job_id: int) -> Job | None: ...

    async def jobs_in(
        self,
        states: Iterable[State],
        *,
        order: str = "id",
        newest_first: bool = False,
        limit: int | None = None,
    ) -> list[Job]: ...

    async def waiting(self) -> list[Waiting]: ...

    async def missing_sources(self) -> set[int]:
        """The jobs failed ``source_missing`` (taken up again when their file is back)."""

    async def known_snapshots(self) -> dict[str, Known]: ...

    async def newest_identities(self, after_id: int, limit: int) -> Sequence[Sequence[Any]]:
        """A page of (id, path, size, mtime_ns, inode, state) of the jobs above ``after_id``
        that are the newest of their path, by id."""

    async def live_snapshots(self) -> dict[str, Known]: ...

    async def snapshots_of(self, job_ids: Iterable[int]) -> dict[str, Known]: ...

    async def states_of(self, job_ids: Iterable[int]) -> dict[int, State]: ...

    async def snapshots_for_paths(self, paths: Iterable[str]) -> dict[str, Known]: ...

    async def known_snapshots_for(self, path: str) -> Known | None: ...

    async def due_jobs(self, now: float, limit: int, exclude: Sequence[int]) -> list[Job]: ...

    async def backlog(self) -> tuple[int, int]: ...

    async def twin_of(self, fingerprint: str, job_id: int) -> Job | None: ...

    async def twins_of(self, prints: Mapping[int, str]) -> dict[int, Job | None]: ...

    async def pending_after_actions(self) -> list[Job]: ...

    async def failed_not_set_aside(self) -> list[Job]: ...

    async def expired_keeps(self, before: float) -> list[Job]: ...

    async def live_owner(self, paths: Iterable[str], job_id: int) -> int | None: ...

    async def next_due(self, exclude: Sequence[int]) -> float | None: ...

    async def due_in(self, state: State, now: float) -> list[Job]: ...

    async def next_due_in(self, state: State) -> float | None: ...

    async def unsent(self, busy: Iterable[int] = ()) -> Unsent: ...

    async def counts(self) -> dict[str, int]: ...

    async def last_upload_at(self) -> float | None:
        """Unix time the last upload's final byte was acknowledged; None when none was."""


class JobWrites(Protocol):
    """New jobs, and the fields of a job that are not its state."""

    async def add_job(self, *, path: str, root: str, snapshot: Snapshot) -> Job: ...

    async def add_jobs(
        self, *, root: str, files: Sequence[tuple[str, Snapshot]]
    ) -> dict[str, int]: ...

    async def update(self, job_id: int, **changes: Any) -> None:
        """Any fields but ``state`` (refused: only a transition changes it)."""

    async def update_current(self, job: Job, **changes: Any) -> bool:
        """:meth:`update` while the job is still in ``job``'s state with ``job``'s record."""

    async def retake_unowned(self) -> list[int]:
        """Done jobs held back as ``left_alone: owned`` whose path no live job owns now: their
        after-upload step is due again. Returns their ids."""


class JobTransitions(Protocol):
    """Every change of a job's state (the table is ``transitions.py``'s docstring). Each
    commits before it returns, and returns False when the job was no longer in a state
    the transition may leave (nothing is written then)."""

    async def forget(self, job_id: int) -> bool: ...

    async def skip_duplicate(
        self, job_id: int, snapshot: Snapshot, fingerprint: str, sha256: str | None, why: str
    ) -> bool: ...

    async def queue(self, files: Sequence[Queueing]) -> int: ...

    async def source_changed(self, job: Job, snapshot: Snapshot, reason: str) -> bool: ...

    async def source_returned(self, job_id: int, snapshot: Snapshot) -> bool: ...

    async def begin_create(
        self,
        job: Job,
        record_name: str,
        create_started_at: float,
        upload_started_at: float | None = None,
    ) -> bool: ...

    async def record_created(
        self, job_id: int, record_id: str, video_id: str, chunk_size: int | None
    ) -> bool: ...

    async def chunk_acked(self, job: Job, bytes_acked: int) -> bool: ...

    async def sent(self, job: Job, sha256: str, now: float, confirm_at: float) -> bool: ...

    async def restart_upload(self, job: Job, reason: str, *, whole_file: bool) -> bool: ...

    async def record_gone(self, job: Job) -> bool: ...

    async def adopt(
        self,
        job: Job,
        record_id: str,
        video_id: str | None,
        record_name: str,
        sha256: str,
        *,
        ready: bool,
    ) -> bool: ...

    async def resend(self, job: Job) -> bool: ...

    async def confirmed(self, job: Job, done_at: float, *, kept: bool) -> bool: ...

    async def fail(
        self, job: Job, reason: str, detail: str, *, delete_record: bool = False
    ) -> bool: ...

    async def retry(self, job_ids: Sequence[int] | None, *, force: bool) -> list[int]: ...


class RecordDeletions(Protocol):
    """The durable queue of partial records to delete, and the suspected orphans."""

    deletions_queued: int
    """Records queued through this ledger so far (a worker wakes the sweeper by it)."""

    async def due_deletions(self, now: float) -> list[Deletion]: ...

    async def deletions_for(self, job_id: int) -> list[Deletion]: ...

    async def pending_deletions(self) -> int: ...

    async def deletion_done(self, deletion_id: int) -> None: ...

    async def deletion_failed(self, deletion_id: int, next_at: float, error: str) -> None: ...

    async def note_orphan(self, record_id: str, job_id: int, name: str, why: str) -> None: ...

    async def suspected_orphans(self) -> list[dict[str, Any]]: ...


class Forgetting(Protocol):
    """Retention (``ledger.forget_after``): old done jobs, and deleting them for good."""

    async def old_done(self, before: float, after_id: int, limit: int) -> list[OldDone]:
        """Up to ``limit`` done jobs above id ``after_id``, done at or before ``before``, whose
        after-upload action has run (and is not held back by another job's ownership)."""

    async def forget_done(self, job_ids: Sequence[int], before: float) -> int:
        """Delete those of ``job_ids`` still done at or before ``before``, never the newest job
        (its id would be given again); how many went."""


class JobLedger(
    LedgerHandle, Claims, JobReads, JobWrites, JobTransitions, RecordDeletions, Forgetting, Protocol
):
    """Everything ingestd asks of its ledger."""


@runtime_checkable
class Fleet(Protocol):
    """What only a shared ledger answers: its nodes (postgres/fleet.py). Commands ask
    :func:`fleet_of` for it; a one-machine ledger has none."""

    async def nodes(self, limit: int | None = None) -> list[NodeView]:
        """Every node, with the first ``limit`` jobs it holds a live claim on (None: all)."""

    async def forget_node(self, name: str) -> NodeForgotten:
        """Drop a node that is gone or stopped, giving back its claims; never a live one."""

    async def set_node_paused(self, node: str, paused: bool) -> bool:
        """Pause or resume one node; False when no such node is known."""

    async def failed_last_held_by(self, node: str) -> list[int]:
        """The ids of the failed jobs ``node`` held last."""

    async def node_known(self, node: str) -> bool:
        """On the list of nodes, or the last holder of some job."""

    async def fleet_paused(self) -> bool:
        """The pause of every node (``pause`` without ``--node``)."""


def fleet_of(ledger: JobLedger) -> Fleet | None:
    """The ledger's fleet-wide side when it is shared; None for a one-machine ledger."""
    return ledger if ledger.shared and isinstance(ledger, Fleet) else None


async def open_ledger(
    where: Path | Config, *, readonly: bool = False, daemon: bool = False, migrate: bool = False
) -> JobLedger:
    """Open the ledger that ``where`` names: a SQLite file (created and migrated unless
    ``readonly``), or the configuration's ledger, shared on PostgreSQL when ``ledger.url``
    is set (checked, never migrated, unless ``migrate``; a ``daemon`` takes its node's lock).

    Raises ``LedgerDamaged`` for a damaged or foreign file, ``LedgerError`` when
    it cannot be opened at all.
    """
    if isinstance(where, Path) or not where.ledger.shared:
        from ingestd.ledger.store import SqliteLedger  # the backend, loaded when opened

        path = where if isinstance(where, Path) else where.ledger.path
        return await SqliteLedger.open(path, readonly=readonly)
    from ingestd.config.credentials import ledger_password
    from ingestd.ledger.postgres.store import PostgresLedger
    from ingestd.logs import register_secret

    settings, watch = where.ledger, where.watch
    password = ledger_password(settings)
    register_secret(password)
    assert settings.url is not None
    roots = {watch.label(i): str(path) for i, path in enumerate(watch.paths)}
    return await PostgresLedger.open(
        settings.url,
        password=password,
        node=settings.node,
        lease=settings.lease,
        roots=roots,
        daemon=daemon,
        migrate=migrate,
    )


def describe_shared_target(url: str, key: str) -> str:
    """``postgresql://HOST/DB`` of a shared ledger's URL given under ``key`` (ConfigError,
    the value not shown, when libpq cannot read it)."""
    from ingestd.ledger.postgres.copy import describe_target

    return describe_target(url, key)


async def copy_to_shared(
    path: Path, url: str, *, password: str | None, roots: Mapping[str, str]
) -> Any:
    """``ingestd ledger copy``: the SQLite ledger at ``path`` into the shared one at ``url``,
    then marked moved (ledger/postgres/copy.py); what was copied."""
    from ingestd.ledger.postgres.copy import copy_ledger

    return await copy_ledger(path, url, password=password, roots=roots)
