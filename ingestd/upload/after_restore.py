"""After ``ingestd ledger restore``: a file the restored ledger may have lost is checked first.

A restored backup forgets what happened after it was taken: files uploaded
since then look new (or ``queued``, ``creating``, ``uploading``) again. The
rule, in this one place: while the ledger carries ``restored_at``, every job
whose file was finished before the restore (``mtime`` <= ``restored_at`` +
the clock margin) is checked against the server before a worker creates a
record or sends a byte for it:

1. It has a record id (``uploading`` in the backup): the record is fetched.
   Its video ``ready``: the job is ``done``, nothing is sent. The record
   exists otherwise: the upload resumes into it (bytes the server already
   holds are harmless repeats). The record is gone: go on with 2.
2. The records named exactly like the job's record are searched, by this
   account, created in the window the backup cannot know about: from the
   backup's time (or the file's mtime, if later; or the backup's own
   ``creating`` attempt, if earlier) less the clock margin, to the restore
   plus the margin. Of those with video content:

   - one whose video is ``ready``: adopted, the job is ``done``;
   - one still processing: adopted as ``confirming`` (the confirmer waits for
     ``ready``, sends again if the server says it lost the bytes, and fails
     the job ``not_ready`` after ``upload.confirm_timeout``);
   - several: the job fails ``ambiguous_record`` for an operator.

3. None: the job goes on as if its create-upload might have been sent at
   any time since the backup (``creating`` with that start), so the usual
   reconciliation also settles an empty record such a lost attempt left.

What this cannot tell: the search shows no size or hash, so a record of the
same name made by another machine under the same account within the window
would be taken for ours. Record names that carry the machine (``record.name``)
rule that out. A file finished after the restore is never checked (it cannot
be on the server yet): the rule costs nothing once the backlog of the
restore is through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingestd.disk.judged import OpenRule
from ingestd.errors import PermanentError
from ingestd.intake.identity import full_sha256
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job, State
from ingestd.upload.naming import RecordNamer
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import ValtClient

MARGIN = valt_rules.CLOCK_SKEW_MARGIN


@dataclass(frozen=True, slots=True)
class RestoreWindow:
    """The span a restored ledger knows nothing about: from its backup to the restore."""

    backup_time: float
    restored_at: float

    def covers(self, job: Job) -> bool:
        """Could the file have been uploaded before the restore?"""
        return job.mtime_ns / 1e9 <= self.restored_at + MARGIN

    def start(self, job: Job) -> float:
        """The earliest a record of this job unknown to the backup can have been created."""
        begin = self.backup_time
        if job.create_started_at is not None:
            begin = min(begin, job.create_started_at)
        return max(begin, job.mtime_ns / 1e9)


async def restore_window(ledger: JobLedger) -> RestoreWindow | None:
    """The window of the last restore, None when the ledger was never restored."""
    restore = await ledger.last_restore()
    return None if restore is None else RestoreWindow(*restore)


def is_restore_candidate(
    record: valt_rules.FoundRecord, *, name: str, since: float, until: float, username: str
) -> bool:
    """Could this record be an upload of ours the restored ledger forgot?

    Exact name, created in the window (both ends widened by the clock
    margin), with video content (or videos not shown: the record itself is
    asked), by our account where the search says so.
    """
    has_content = record.video_ids or not record.videos_shown
    if record.name != name or not has_content or record.created is None:
        return False
    if not since - MARGIN <= record.created <= until + MARGIN:
        return False
    return record.author is None or record.author == username


class AfterRestore:
    """Applies the rule above; :meth:`settle` is called for each job before it is uploaded."""

    def __init__(
        self, *, ledger: JobLedger, client: ValtClient, namer: RecordNamer, rule: OpenRule
    ) -> None:
        self.rule = rule  # how the source is opened (judged.py)
        self.ledger = ledger
        self.client = client
        self.namer = namer
        self._window: RestoreWindow | None = None
        self._loaded = False

    async def settle(self, job: Job, bound: Any) -> Job | None:
        """The job to go on with, or None when a record on the server settled it."""
        if not self._loaded:  # a restore needs the daemon stopped: the value cannot change
            self._window, self._loaded = await restore_window(self.ledger), True
        window = self._window
        if window is None or not window.covers(job):
            return job
        name = (
            job.record_name
            or (
                await self.namer.meta_for(Path(job.path), Path(job.root), job.size, job.mtime_ns)
            ).name
        )
        if job.record_id:
            data = await self.client.get_record(job.record_id)
            if data is not None:
                state = valt_rules.video_state(data, job.video_id or "")
                if state is valt_rules.VideoState.READY:
                    await self._adopt(job, job.record_id, job.video_id, name, State.DONE, bound)
                    return None
                return job
            if not await self.ledger.record_gone(job):
                return None  # the job moved on meanwhile
            job = await self.ledger.get_job(job.id)
        start = window.start(job)
        mine = await self._uploads_named(name, start, window.restored_at)
        if len(mine) > 1:
            ids = ", ".join(r.record_id for r, _data in mine)
            raise PermanentError(
                f"after the ledger's restore, {len(mine)} records named {name!r} with video "
                f"content were found ({ids}); keep one on the server, then "
                f"`ingestd retry {job.id}`",
                reason="ambiguous_record",
            )
        if mine and await self._adopt_found(job, *mine[0], name, bound):
            return None
        begin = job.state != State.CREATING or (job.create_started_at or 0) > start
        if begin and not await self.ledger.begin_create(job, name, start):
            return None  # the job moved on meanwhile
        return await self.ledger.get_job(job.id)

    async def _uploads_named(
        self, name: str, since: float, until: float
    ) -> list[tuple[valt_rules.FoundRecord, Mapping[str, Any]]]:
        """Records of ours named ``name`` with video content, created in the window."""
        found = await self.client.search_records(name, since - MARGIN)
        mine: list[tuple[valt_rules.FoundRecord, Mapping[str, Any]]] = []
        for record in found:
            username = self.client.username
            if not is_restore_candidate(
                record, name=name, since=since, until=until, username=username
            ):
                continue
            # The search need not show videos or the author: the record itself does.
            data = await self.client.get_record(record.record_id)
            if data is None or not valt_rules.parse_video_ids(data.get("videos")):
                continue
            author = valt_rules.author_of(data)
            if author is None or author == username:
                mine.append((record, data))
        return mine

    async def _adopt_found(
        self,
        job: Job,
        record: valt_rules.FoundRecord,
        data: Mapping[str, Any],
        name: str,
        bound: Any,
    ) -> bool:
        video_ids = valt_rules.parse_video_ids(data.get("videos"))
        assert video_ids
        video_id = video_ids[0]
        state = valt_rules.video_state(data, video_id)
        if state is valt_rules.VideoState.MISSING:
            return False  # its bytes were lost: nothing to adopt
        target = State.DONE if state is valt_rules.VideoState.READY else State.CONFIRMING
        await self._adopt(job, record.record_id, video_id, name, target, bound)
        return True

    async def _adopt(
        self,
        job: Job,
        record_id: str,
        video_id: str | None,
        name: str,
        state: State,
        bound: Any,
    ) -> None:
        """Record the server's record as this job's; ``done`` or ``confirming``."""
        sha256 = await asyncio.to_thread(full_sha256, Path(job.path), job.snapshot, self.rule)
        ready = state is State.DONE
        if not await self.ledger.adopt(job, record_id, video_id, name, sha256, ready=ready):
            return  # the job moved on meanwhile
        bound.info(
            "record.adopted_after_restore", record_id=record_id, name=name, state=state.value
        )
