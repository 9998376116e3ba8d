"""One upload worker's job: a file, its record, its chunks, its outcome.

The ledger is written before every step that depends on it, so a crash at any
point resumes correctly: "creating" (with the time the attempt began) before
create-upload, the record id before the first chunk, ``bytes_acked`` after
each acknowledged chunk (while the next one goes: acks.py). The full-content
sha256 is carried across chunks and, after a resume, rebuilt from the bytes
already sent, so it always covers the whole file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ingestd.aio import blocking
from ingestd.config.schema import UploadConfig
from ingestd.disk.folders import FolderState, folder_state
from ingestd.disk.judged import OpenRule, same_identity, snapshot
from ingestd.errors import (
    AuthFailed,
    BodyTooLarge,
    ChunkRefused,
    ClaimEnded,
    LedgerUnwritable,
    PermanentError,
    RetryableError,
    ServerUnreachable,
    SourceChanged,
    SourceMissing,
    SourceUnreadable,
)
from ingestd.failpoints import failpoint
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Job, State
from ingestd.logs import get_logger
from ingestd.telemetry import Telemetry
from ingestd.units import format_size
from ingestd.upload.acks import LaggingAcks, MovedOn
from ingestd.upload.after_restore import AfterRestore
from ingestd.upload.backoff import backoff_delay
from ingestd.upload.claim import claim_ended, while_claimed
from ingestd.upload.confirm import deletion_done
from ingestd.upload.naming import RecordNamer
from ingestd.upload.pacing import Pacer
from ingestd.upload.pieces import Hasher, Sending, Source, hash_prefix
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import ValtClient

log = get_logger("ingestd.upload.job")

PROGRESS_EVERY = 5.0
# Delay before a job whose login is blocked is looked at again (not an attempt).
AUTH_RETRY_DELAY = 5.0
# Delay before a job whose watch folder is away is looked at again (not an attempt either).
FOLDER_RETRY_DELAY = 10.0


class _Restart(Exception):
    """The upload was reset in the ledger; the worker returns and the job is re-dispatched."""


class Uploader:
    """Takes one job at a time from the worker pool to ``confirming`` (or an outcome)."""

    def __init__(
        self,
        *,
        upload: UploadConfig,
        rule: OpenRule,
        ledger: JobLedger,
        client: ValtClient,
        namer: RecordNamer,
        stopping: asyncio.Event,
        set_aside: Callable[[Job, str, str], Awaitable[None]],
        telemetry: Telemetry | None = None,
        on_change: Callable[[], None] = lambda: None,
        pacer: Pacer | None = None,
        require_mount: bool = False,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        self.require_mount = require_mount  # watch.require_mount: how a folder counts as away
        self.pacer = pacer  # upload.bandwidth_limit, shared by every worker (pacing.py)
        self.upload = upload
        self.set_aside = set_aside  # after_upload.failed_to, for a file that failed for good
        self.ledger = ledger
        self.client = client
        self.namer = namer
        self.stopping = stopping
        self.on_change = on_change
        self._warned_chunking: set[int] = set()
        # Every read of a source is of the file that was judged (judged.py).
        self.rule = rule
        self.after_restore = AfterRestore(ledger=ledger, client=client, namer=namer, rule=self.rule)

    async def process(self, job: Job) -> None:
        """Advance ``job`` as far as it goes; every outcome is committed to the ledger."""
        bound = log.bind(job_id=job.id, path=job.path)
        try:
            await self._check_source(job)
            job = await self._after_restore(job, bound)
            if job.state in (State.QUEUED, State.CREATING) or not job.record_id:
                job = await self._ensure_record(job, bound)
            await self._send(job, bound)
        except (_Restart, MovedOn, ServerUnreachable, ClaimEnded):
            # ClaimEnded: another node goes on with the job (logged where it was raised).
            # ServerUnreachable is not the job's fault: it keeps its state, no attempt
            # counts, and it is due again the moment the outage watch hears the server
            # (the dispatcher starts nothing meanwhile), not some seconds later.
            pass
        except SourceChanged as exc:
            await self._source_changed(job, str(exc), bound)
        except SourceMissing:
            if await self._folder_away(job, bound):
                return
            await self._source_missing(job, bound)
        except SourceUnreadable as exc:
            await self._retry_later(job, "source_unreadable", str(exc), bound)
        except AuthFailed:
            # Not the job's fault: it goes on after a login works (no attempt counts).
            await self.ledger.update(job.id, next_attempt_at=time.time() + AUTH_RETRY_DELAY)
        except PermanentError as exc:
            await self._fail(job, exc.reason, str(exc), bound)
        except RetryableError as exc:
            await self._retry_later(job, exc.reason, str(exc), bound)
        except LedgerUnwritable:
            raise  # not the job's fault: no attempt counted, nothing to record (daemon._worker)
        except Exception as exc:  # a bug must not stop the pool, nor lose the job
            bound.exception("job.internal_error")
            await self._retry_later(job, "internal_error", f"{type(exc).__name__}: {exc}", bound)
        finally:
            self.on_change()

    # --- source ---------------------------------------------------------------------

    def _check_claim(self, job: Job) -> None:
        if self.ledger.lease_left(job.id) <= 0:  # a shared ledger: another node may take it
            raise claim_ended(job, "this node no longer holds the job")

    async def _check_source(self, job: Job) -> None:
        self._check_claim(job)
        try:
            current = await blocking(
                snapshot, Path(job.path), follow_symlinks=self.rule.follow_symlinks
            )
        except PermissionError as exc:  # a folder above it locked: not gone, not a bug
            raise SourceUnreadable(f"cannot look at the file ({exc.strerror})") from None
        if current is None:
            raise SourceMissing(job.path)
        found = (current.size, current.mtime_ns, current.inode, current.device)
        if not same_identity(found, job.snapshot):
            raise SourceChanged("size, mtime or inode changed")

    async def _source_changed(self, job: Job, why: str, bound: Any) -> None:
        current = await blocking(
            snapshot, Path(job.path), follow_symlinks=self.rule.follow_symlinks
        )
        if current is None:
            await self._source_missing(job, bound)
            return
        fresh = await self.ledger.get_job(job.id)
        new = (current.size, current.mtime_ns, current.inode, current.device)
        await self.ledger.source_changed(fresh, new, "changed during upload")
        bound.warning("file.changed", reason=why, record_id=fresh.record_id, size=current.size)

    async def _folder_away(self, job: Job, bound: Any) -> bool:
        """Whether the file is gone with its whole watch folder (a share unmounted): then
        it is not the file's fault, so the job keeps its state, its record and its
        attempts, and is looked at again later."""
        if Path(job.root) not in self.rule.roots:
            return False  # a folder no longer watched (or a file given by hand)
        state = await blocking(folder_state, Path(job.root), require_mount=self.require_mount)
        if state == FolderState.PRESENT:
            return False
        await self.ledger.update(job.id, next_attempt_at=time.time() + FOLDER_RETRY_DELAY)
        bound.info("job.folder_away", folder_state=state.value, retry_in_s=FOLDER_RETRY_DELAY)
        return True

    async def _source_missing(self, job: Job, bound: Any) -> None:
        fresh = await self.ledger.get_job(job.id)
        await self.ledger.fail(
            fresh,
            "source_missing",
            "the file disappeared before its upload finished; its partial record is deleted",
            delete_record=True,
        )
        bound.warning("job.failed", reason="source_missing", record_id=fresh.record_id)
        self.telemetry.job_failed(job.id, job.path, "source_missing", "the file disappeared")

    # --- outcomes -----------------------------------------------------------------------

    async def _fail(self, job: Job, reason: str, detail: str, bound: Any) -> None:
        fresh = await self.ledger.get_job(job.id)
        drop = fresh.state == State.UPLOADING
        if not await self.ledger.fail(fresh, reason, detail, delete_record=drop):
            return  # the job moved on meanwhile: nothing of it to fail
        await self.set_aside(fresh, reason, detail)
        bound.error("job.failed", reason=reason, detail=detail, record_id=fresh.record_id)
        self.telemetry.job_failed(job.id, job.path, reason, detail)

    async def _retry_later(self, job: Job, reason: str, detail: str, bound: Any) -> None:
        fresh = await self.ledger.get_job(job.id)
        attempts = fresh.attempts + 1
        if attempts >= self.upload.max_attempts:
            detail = f"gave up after {attempts} attempts; last error: {detail}"
            await self._fail(fresh, reason, detail, bound)
            return
        upload = self.upload
        delay = backoff_delay(attempts, upload.backoff_initial, upload.backoff_max)
        await self.ledger.update(
            job.id, attempts=attempts, next_attempt_at=time.time() + delay, fail_detail=detail
        )
        self.telemetry.retry(reason)
        bound.warning(
            "upload.retry", reason=reason, error=detail, attempt=attempts, delay_s=round(delay, 1)
        )

    # --- the record ------------------------------------------------------------------------

    async def _after_restore(self, job: Job, bound: Any) -> Job:
        """A file a restored ledger may have lost is checked on the server (after_restore.py)."""
        checked = await self.after_restore.settle(job, bound)
        if checked is None:
            raise _Restart  # a record on the server settled it: done or confirming
        return checked

    async def _ensure_record(self, job: Job, bound: Any) -> Job:
        """Create the job's record, or adopt the one an interrupted attempt made."""
        await self._delete_partials(job, bound)
        if job.state == State.CREATING and job.create_started_at is not None and job.record_name:
            # First settle what an interrupted attempt may have made, under the name it used:
            # metadata that can no longer be read must not leave an empty record behind.
            await self._reconcile(job, job.record_name, bound)
        meta = await self.namer.meta_for(Path(job.path), Path(job.root), job.size, job.mtime_ns)
        started = time.time()
        if not await self.ledger.begin_create(
            job,
            meta.name,
            job.create_started_at or started,
            job.upload_started_at or started,
        ):
            raise _Restart  # the job moved on meanwhile
        failpoint("before_create")
        created = await self.client.create_upload(meta.name, meta.template, meta.share)
        failpoint("after_create_response")
        changes: dict[str, Any] = {
            "state": State.UPLOADING,
            "record_id": created.record_id,
            "video_id": created.video_id,
            "bytes_acked": 0,
            # Pinned with the record: a resume must cut the chunks where the server
            # may already hold one, even if upload.chunk_size changed meanwhile.
            "chunk_size": self.upload.chunk_size if job.chunk_size is None else job.chunk_size,
        }
        if not await self.ledger.record_created(
            job.id, created.record_id, created.video_id, changes["chunk_size"]
        ):
            raise _Restart  # the job moved on meanwhile: its new record is queued for deletion
        bound.debug("record.created", record_id=created.record_id, name=meta.name)
        failpoint("after_record_committed")
        # The job as the two commits above left it (one trip to the ledger less a file).
        return dataclasses.replace(
            job,
            **changes,
            record_name=meta.name,
            create_started_at=job.create_started_at or started,
            upload_started_at=job.upload_started_at or started,
        )

    async def _delete_partials(self, job: Job, bound: Any) -> None:
        """A partial record of this job that cannot be resumed goes before a new one is made.

        The sweeper deletes such records in the background, but may not have got to
        this one yet (or its delete failed and waits to be tried again). A failure
        here is the job's retry; a refusal is left to the sweeper, which keeps trying.
        """
        for item in await self.ledger.deletions_for(job.id):
            try:
                existed = await self.client.delete_record(item.record_id)
            except PermanentError as exc:
                bound.warning("record.delete_refused", record_id=item.record_id, error=str(exc))
                continue
            await deletion_done(self.ledger, item, existed, bound)

    async def _reconcile(self, job: Job, name: str, bound: Any) -> None:
        """A create-upload of ours may have reached the server: find and settle it.

        design.md: a record is proven ours and empty when it has the exact name,
        was created after the attempt began (less the clock margin), ``GET
        records/{id}`` shows ``"videos": null``, and the author is ours where the
        server shows one (the search need not show videos or the author, and an
        unknown is never taken for "empty" or "ours"). Several proven: an operator
        decides. One: the server does not show an empty record's video id, so it
        cannot be filled; it is deleted and a new one made (still one record). A
        same-named record that cannot be proven is never deleted: it is noted as a
        suspected orphan, for ``ingestd status``.
        """
        started = job.create_started_at
        assert started is not None
        username = self.client.username
        found = await self.client.search_records(name, started)
        proven: list[valt_rules.FoundRecord] = []
        for record in found:
            if not valt_rules.may_be_our_create(
                record, name=name, attempt_started=started, username=username
            ):
                continue
            data = await self.client.get_record(record.record_id)
            verdict = valt_rules.judge_candidate(
                record, data, attempt_started=started, username=username
            )
            if verdict is valt_rules.Candidate.PROVEN:
                proven.append(record)
            elif verdict is valt_rules.Candidate.UNPROVEN:
                why = "named like this file's interrupted create-upload; emptiness not shown"
                await self.ledger.note_orphan(record.record_id, job.id, name, why)
                bound.warning("record.orphan_suspected", record_id=record.record_id, name=name)
        if len(proven) > 1:
            ids = ", ".join(r.record_id for r in proven)
            raise PermanentError(
                f"{len(proven)} empty records named {name!r} were created since this file's "
                f"upload began ({ids}); delete the extra ones on the server, then "
                f"`ingestd retry {job.id}`",
                reason="ambiguous_record",
            )
        if proven:
            record = proven[0]
            await self.client.delete_record(record.record_id)
            bound.info("record.reconciled", record_id=record.record_id, outcome="replaced")
        else:
            bound.info("record.reconciled", outcome="none_found")

    # --- the bytes -------------------------------------------------------------------------

    def _chunk_size(self, job: Job) -> int:
        """The job's own chunk size (pinned at record creation, halved on a 413), else the
        configured one; 0 sends the whole file in one request."""
        if job.whole_file:
            return 0
        return job.chunk_size if job.chunk_size is not None else self.upload.chunk_size

    async def _send(self, job: Job, bound: Any) -> None:
        """Send the chunks from ``bytes_acked`` to the end, then commit ``confirming``."""
        assert job.record_id and job.video_id
        path, total = Path(job.path), job.size
        if job.bytes_acked:
            hasher = await blocking(hash_prefix, path, job.bytes_acked, job.snapshot, self.rule)
        else:
            hasher = hashlib.sha256()
        position, chunk_size, first = job.bytes_acked, self._chunk_size(job), True
        bound = bound.bind(record_id=job.record_id)
        if position:
            bound.info("upload.resumed", offset=position, size=total)
        last_progress = time.monotonic()
        source: Source | None = None
        acks = LaggingAcks(self.ledger, job)
        try:
            while position < total or total == 0:
                if self.stopping.is_set():
                    return  # drain: the job resumes from bytes_acked next time
                if source is not None and source.unchanged(job.snapshot):
                    self._check_claim(job)  # the file as fstat told it (pieces.py)
                else:
                    await self._check_source(job)
                source = source or await Source.open(path, job.snapshot, self.rule)
                end = min(total, position + chunk_size) if chunk_size else total
                next_end = min(total, end + chunk_size) if chunk_size else None
                try:
                    async with while_claimed(self.ledger, job):
                        chunk_hasher = await self._send_chunk(
                            job, source, position, end, hasher, next_end
                        )
                except BodyTooLarge:
                    await acks.settle()
                    chunk_size = await self._shrink(job, end - position, bound)
                    continue
                except ChunkRefused as exc:
                    await acks.settle()
                    await self._refused(job, position, first, exc, bound)
                failpoint("after_chunk_response")
                await acks.settle()  # the previous chunk's, committed while this one went
                hasher, position, first = chunk_hasher, end, False
                if position >= total:
                    # The last chunk's bytes_acked is committed together with "confirming"
                    # (one commit less a file, still before anything depends on it: a crash
                    # before that commit costs this chunk, sent again as a harmless repeat).
                    await self._check_source(job)
                    await self._mark_uploaded(job, hasher.hexdigest(), bound, last_chunk=True)
                    return
                acks.start(end)  # while the next chunk goes (acks.py)
                if time.monotonic() - last_progress >= PROGRESS_EVERY and position < total:
                    last_progress = time.monotonic()
                    bound.info(
                        "upload.progress",
                        bytes_acked=position,
                        size=total,
                        percent=round(100 * position / total, 1),
                    )
            await self._check_source(job)
            await self._mark_uploaded(job, hasher.hexdigest(), bound)
        except asyncio.CancelledError:
            await acks.abandon()
            raise
        finally:
            if source is not None:
                source.close()
            await acks.settle()  # before an error's handler writes the ledger too

    async def _send_chunk(
        self,
        job: Job,
        source: Source,
        start: int,
        end: int,
        hasher: Hasher,
        next_end: int | None,
    ) -> Hasher:
        """Send bytes ``[start, end)``; returns a copy of ``hasher`` fed with them."""
        assert job.record_id and job.video_id
        if job.size == 0:
            content_range = valt_rules.EMPTY_FILE_RANGE
        else:
            content_range = valt_rules.content_range(start, end, job.size)
        sendings: list[Sending] = []

        def pieces() -> AsyncIterator[memoryview]:
            sendings.append(Sending(hasher))
            return source.pieces(sendings[-1], start, end, self.pacer, next_end=next_end)

        await self.client.upload_chunk(
            job.record_id,
            job.video_id,
            filename=source.path.name,
            content_range=content_range,
            length=end - start,
            pieces=pieces,
        )
        self.telemetry.chunk_sent(end - start)
        if not sendings:  # cannot happen over HTTP/1.1; if it does, send the chunk again
            raise RetryableError("the server answered before taking the chunk", reason="bad_answer")
        return sendings[-1].hasher

    async def _shrink(self, job: Job, refused: int, bound: Any) -> int:
        """A 413: halve the chunk (not below 1 MiB) and remember the size for this job."""
        smaller = valt_rules.smaller_chunk(refused)
        if smaller is None:
            raise PermanentError(
                f"the server refuses requests of {format_size(refused)} as too large (413); "
                "lower upload.chunk_size or raise the server's upload limit "
                "(nginx client_max_body_size)",
                reason="too_large",
            )
        await self.ledger.update(job.id, chunk_size=smaller, whole_file=0)
        bound.warning("upload.chunk_reduced", refused=refused, chunk_size=smaller)
        return smaller

    async def _refused(
        self, job: Job, position: int, first: bool, exc: ChunkRefused, bound: Any
    ) -> None:
        fresh = await self.ledger.get_job(job.id)
        action = valt_rules.classify_refusal(
            start=position, first_in_attempt=first, whole_file=bool(fresh.whole_file)
        )
        if action is valt_rules.Refusal.FAIL or fresh.restarts >= valt_rules.MAX_RESTARTS:
            raise PermanentError(
                f"the server refused the upload: {exc}", status=exc.status, reason="upload_refused"
            )
        whole = action is valt_rules.Refusal.WHOLE_FILE
        await self.ledger.restart_upload(fresh, f"chunk refused: {exc}", whole_file=whole)
        event = "upload.chunking_unsupported" if whole else "upload.resume_refused"
        bound.warning(event, offset=position, error=str(exc))
        raise _Restart

    async def _mark_uploaded(
        self, job: Job, sha256: str, bound: Any, *, last_chunk: bool = False
    ) -> None:
        """Commit ``confirming``; with ``last_chunk``, this commit also acknowledges it."""
        now = time.time()
        confirm_at = now + valt_rules.next_confirm_delay(None)
        if not await self.ledger.sent(job, sha256, now, confirm_at):
            raise _Restart  # the job moved on meanwhile
        if last_chunk:
            failpoint("after_chunk_committed")
        seconds = now - (job.upload_started_at or now)
        self.telemetry.upload_completed(job.size, seconds)
        bound.debug(
            "upload.completed",
            size=job.size,
            sha256=sha256,
            seconds=round(seconds, 3),
            mb_per_s=round(job.size / 1e6 / seconds, 2) if seconds > 0 else None,
        )
        failpoint("in_confirming")
