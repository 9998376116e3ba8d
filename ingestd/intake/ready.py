"""A finished file: skipped if its content is already on the server, else queued.

Copies are recognised by their fingerprint (:mod:`ingestd.intake.identity`)
and proven by the full sha256 against the earlier upload's; a copy of a file
still in progress waits for it. The files a settle pass finds finished are
queued together, one transaction, then the workers are woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ingestd.disk.judged import OpenRule
from ingestd.errors import FileRefused
from ingestd.intake.identity import fingerprint, full_sha256
from ingestd.intake.waiting import Tracked, Verdict, Waiting, problem
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job, Queueing, State
from ingestd.logs import get_logger

log = get_logger("ingestd.intake.ready")


def compares_with(twin: Job | None) -> bool:
    """True when the full sha256 must be compared with ``twin``'s: it is done and has one."""
    return twin is not None and twin.state == State.DONE and bool(twin.sha256)


def twin_outcome(twin: Job | None, same_sha256: bool) -> tuple[str, str | None]:
    """What an earlier job of the same fingerprint means for a finished file:
    ``("duplicate", why)``, ``("wait", why)`` or ``("upload", None)``. ``same_sha256``:
    the full hashes agree (only asked when :func:`compares_with`). The settle loop and
    ``ingestd plan`` both decide with this."""
    if twin is not None and compares_with(twin) and same_sha256:
        return "duplicate", f"same content as {twin.path}"
    if twin is not None and twin.state != State.DONE:
        return "wait", f"same content as job {twin.id}, in progress"
    return "upload", None


@dataclass
class Pending:
    """Finished files a settle pass queues together, and their fingerprints."""

    jobs: list[tuple[int, Path, Tracked, float, str]] = field(default_factory=list)
    prints: dict[str, int] = field(default_factory=dict)

    def add(self, job_id: int, path: Path, tracked: Tracked, now: float, print_: str) -> None:
        self.jobs.append((job_id, path, tracked, now, print_))
        self.prints.setdefault(print_, job_id)


class Ready:
    """Decides duplicate or upload for each finished file, and queues the uploads."""

    def __init__(
        self,
        *,
        ledger: JobLedger,
        rule: OpenRule,
        waiting: Waiting,
        on_ready: Callable[[], None],
    ) -> None:
        self.ledger = ledger
        self.rule = rule
        self.waiting = waiting
        self.on_ready = on_ready

    async def identify(
        self,
        job_id: int,
        path: Path,
        tracked: Tracked,
        now: float,
        *,
        force: bool,
        pending: Pending,
        verdict: Verdict | None = None,
        twins: Mapping[int, Job | None] | None = None,
    ) -> None:
        """A finished file: skip it if its content is already on the server, else add it
        to ``pending`` (queued by :meth:`queue_all`). ``verdict``: the fingerprint (or
        the error reading it) the finished checks already took; ``twins``: the earlier
        jobs of the same content, looked up for a batch (:meth:`JobLedger.twins_of`)."""
        try:
            if verdict is not None and verdict.read_error is not None:
                raise verdict.read_error
            if verdict is not None and verdict.fingerprint is not None:
                print_ = verdict.fingerprint
            else:
                print_ = await asyncio.to_thread(fingerprint, path, tracked.snap, self.rule)
            earlier = None if force else pending.prints.get(print_)
            if earlier is not None:
                # Same content as a file this pass queues: that one is "in progress".
                await self.waiting.wait(
                    job_id, path, tracked, f"same content as job {earlier}, in progress"
                )
                return
            if force:
                twin = None
            elif twins is not None and job_id in twins:
                twin = twins[job_id]
            else:
                twin = await self.ledger.twin_of(print_, job_id)
            same = compares_with(twin) and (
                await asyncio.to_thread(full_sha256, path, tracked.snap, self.rule)
                == (twin.sha256 if twin is not None else None)
            )
        except (OSError, FileRefused) as exc:
            await self.waiting.wait(job_id, path, tracked, f"cannot read the file ({problem(exc)})")
            return
        outcome, why = twin_outcome(twin, same)
        if twin is not None and outcome == "duplicate":
            await self.ledger.skip_duplicate(
                job_id,
                # The version judged, or the next scan takes it for a changed file: a new job.
                tracked.snap,
                print_,
                twin.sha256,
                why or "",
            )
            self.waiting.tracking.pop(job_id, None)
            log.info(
                "file.duplicate",
                job_id=job_id,
                path=str(path),
                earlier_job=twin.id,
                earlier_path=twin.path,
                record_id=twin.record_id,
            )
        elif outcome == "wait":
            await self.waiting.wait(job_id, path, tracked, why or "")
        else:
            pending.add(job_id, path, tracked, now, print_)

    async def queue_all(self, pending: Pending) -> None:
        """Queue the finished files of ``pending``: one transaction, then wake the workers."""
        if not pending.jobs:
            return
        changes = [
            Queueing(job_id, tracked.snap, print_)
            for job_id, _path, tracked, _now, print_ in pending.jobs
        ]
        await self.ledger.queue(changes)
        for job_id, path, tracked, now, _print in pending.jobs:
            self.waiting.tracking.pop(job_id, None)
            log.debug(
                "file.ready",
                job_id=job_id,
                path=str(path),
                size=tracked.snap[0],
                waited_s=round(now - tracked.first_seen, 1),
            )
        pending.jobs.clear()  # the fingerprints stay: later files of the pass still see them
        self.on_ready()
