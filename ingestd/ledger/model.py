"""What the ledger holds, as the rest of ingestd sees it: no SQL, no storage.

A job is one file path and everything done about it; its :class:`State` moves
only through the named transitions of ``ledger/transitions.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Protocol, TypedDict

# A file's identity as the ledger compares it: (size, mtime_ns, inode, device).
Snapshot = tuple[int, int, int, int]


class State(enum.StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    CREATING = "creating"
    UPLOADING = "uploading"
    CONFIRMING = "confirming"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


STATES = {state.value: state for state in State}
TERMINAL = frozenset({State.DONE, State.FAILED, State.SKIPPED})
# States a worker takes a job in (the job's phase tells the worker where to resume).
DISPATCHABLE = (State.QUEUED, State.CREATING, State.UPLOADING)
LIVE = tuple(s for s in State if s not in (State.DONE, State.SKIPPED))
# Files whose bytes are still on this machine: the backlog whose age is watched.
NOT_SENT = (State.WAITING, *DISPATCHABLE)
# A file's content twin counts once it is done or on its way (not waiting, failed, skipped).
TWIN_STATES = (State.DONE, *DISPATCHABLE, State.CONFIRMING)


class Row(Protocol):
    """A result row that knows its column names (``sqlite3.Row`` and the like)."""

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


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
    # job owns the path, retake_unowned).
    left_alone: str | None = None
    # Schema 5: the claim in a shared ledger (postgres/claims.py), and who held it last
    lease_owner: str | None = None
    lease_until: float | None = None
    last_node: str | None = None
    uploaded_by: str | None = None  # the daemon that sent the last byte (a shared ledger)

    @classmethod
    def from_row(cls, row: Row) -> Job:
        values = dict(zip(row.keys(), tuple(row), strict=True))
        values["state"] = State(values["state"])
        return cls(**values)

    @property
    def snapshot(self) -> Snapshot:
        return (self.size, self.mtime_ns, self.inode, self.device)


JOB_COLUMNS = frozenset(f.name for f in fields(Job))


@dataclass(frozen=True)
class Unsent:
    """The files whose bytes are still on this machine (see ``JobLedger.unsent``)."""

    files: int
    queued: int
    """Ready to send, and not in a worker's hands."""
    oldest: Job | None


class Waiting(NamedTuple):
    """What a settle pass needs of a ``waiting`` job (no whole Job: passes are frequent)."""

    id: int
    path: str
    force: bool
    snapshot: Snapshot
    root: str  # its watch folder, as jobs name it


# What scans compare a file with: the newest job of its path (id, snapshot, state).
Known = tuple[int, Snapshot, State]


class Queueing(NamedTuple):
    """A finished file the settle loop hands to the workers (``JobLedger.queue``): the
    version judged, and its content fingerprint."""

    job_id: int
    snapshot: Snapshot
    fingerprint: str


class OldDone(NamedTuple):
    """A done job old enough to forget (``JobLedger.old_done``), and whether a newer job
    of its path exists."""

    job: Job
    superseded: bool


class LastRestore(NamedTuple):
    """What ``ingestd ledger restore`` wrote into the ledger it put in place."""

    backup_time: float
    restored_at: float


@dataclass(frozen=True)
class Heartbeat:
    """What a running daemon last wrote about itself (every few seconds), for ``ingestd
    status`` in another process: who it is, since when, and its health at that look."""

    pid: int
    started_at: float
    beat_at: float
    mode: str
    """``daemon`` or ``once``."""
    problems: tuple[str, ...]
    """What ``/healthz`` reported at that look: empty when healthy."""
    server: str
    """The server's state (``ok``, ``unreachable``, ``refused``...)."""
    server_detail: str
    folders: Mapping[str, str]
    """Each watch folder's label and its state."""
    stopped_at: float | None = None
    """Set by the last beat of a daemon that stopped cleanly."""


# A node of a shared ledger: beating, stopped cleanly, or silent for over twice the lease.
NODE_RUNNING, NODE_STOPPED, NODE_GONE = "running", "stopped", "gone"


def gone_after(lease: float) -> float:
    """Seconds of silence after which a node counts as gone: twice ``ledger.lease`` (every
    claim it held has run out by then, and it has missed its heartbeats many times over)."""
    return 2 * lease


def node_state(stopped: bool, silent_s: float, lease: float) -> str:
    """A clean stop says so whatever the time since; else silence beyond :func:`gone_after`."""
    if stopped:
        return NODE_STOPPED
    return NODE_GONE if silent_s > gone_after(lease) else NODE_RUNNING


@dataclass(frozen=True)
class NodeView:
    """One daemon ("node") of a shared ledger, as ``ingestd status`` shows it."""

    name: str
    host: str
    pid: int
    version: str
    started_at: float
    seen_at: float
    """Its last heartbeat (or write), by the database's clock."""
    silent_s: float
    """Seconds since ``seen_at``, by the database's clock."""
    state: str
    """:data:`NODE_RUNNING`, :data:`NODE_STOPPED` or :data:`NODE_GONE`."""
    stopped_at: float | None
    paused: bool
    """Paused on its own (``ingestd pause --node``); the fleet's pause is apart."""
    heartbeat: Heartbeat | None
    active: tuple[Job, ...]
    """Jobs it holds a live claim on: the first few (all of them: ``active_count``)."""
    active_count: int


class NodeForgotten(NamedTuple):
    """What ``ingestd ledger forget-node`` did: nothing unless ``found`` and not ``live``."""

    found: bool
    live: bool
    """Seen within twice the lease, or holding a claim it renewed within the lease."""
    silent_s: float
    live_claims: int
    released: int
    """Claims it still held (all run out), given back."""


@dataclass(slots=True)
class Deletion:
    """A partial record queued for deletion on the server."""

    id: int
    record_id: str
    job_id: int | None
    reason: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float

    @classmethod
    def from_row(cls, row: Row) -> Deletion:
        return cls(**dict(zip(row.keys(), tuple(row), strict=True)))


class FolderReport(TypedDict):
    """A watch folder's state as the daemon last saw it (``ingestd status`` shows it)."""

    folder: str  # its name, or "watch.paths[N]"
    path: str
    state: str  # present, missing, unreadable, unmounted
    since: float  # Unix time of the last change
