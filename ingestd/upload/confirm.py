"""Confirming uploads and deleting partial records: server work that holds no upload worker.

The confirmer polls each record whose bytes are all sent, with growing
delays, until Valt reports the video ``ready``; only then is the job ``done``
and the after-upload action run. The partial-record sweeper empties the
ledger's durable queue of records to delete, with retries, so no orphan
survives a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ingestd.aio import wait_any
from ingestd.config.schema import AfterUploadConfig, UploadConfig
from ingestd.errors import AuthFailed, PermanentError, RetryableError, ServerUnreachable
from ingestd.failpoints import failpoint
from ingestd.ledger.api import JobLedger
from ingestd.ledger.model import Deletion, Job, State
from ingestd.logs import get_logger
from ingestd.telemetry import Telemetry
from ingestd.upload.backoff import backoff_delay
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import ValtClient

log = get_logger("ingestd.upload.confirm")

IDLE_POLL = 1.0

AfterDone = Callable[[Job], Awaitable[None]]


async def _noop(_job: Job) -> None:
    return None


class Confirmer:
    """One task: moves ``confirming`` jobs to ``done`` once the server says ``ready``."""

    def __init__(
        self,
        *,
        upload: UploadConfig,
        after_upload: AfterUploadConfig,
        ledger: JobLedger,
        client: ValtClient,
        after_done: AfterDone = _noop,
        telemetry: Telemetry | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.telemetry = telemetry or Telemetry()
        self.upload = upload
        self.after_upload = after_upload
        self.ledger = ledger
        self.client = client
        self.after_done = after_done
        self.on_change = on_change
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            next_due = await self.poll_due()
            self.wake.clear()
            wait = IDLE_POLL if next_due is None else max(0.0, next_due - time.time())
            await wait_any(stop, self.wake, min(IDLE_POLL, wait))

    async def poll_due(self) -> float | None:
        """Poll every record that is due; returns when the next one will be (None: none)."""
        now = time.time()
        for job in await self.ledger.due_in(State.CONFIRMING, now):
            if self.client.login_blocked_for() > 0 or self.client.outage.down:
                continue
            try:
                await self.confirm(job)
            except (AuthFailed, ServerUnreachable):
                return None
            except (RetryableError, PermanentError) as exc:
                delay = valt_rules.next_confirm_delay(job.confirm_delay)
                await self.ledger.update_current(
                    job, confirm_delay=delay, next_attempt_at=time.time() + delay
                )
                log.warning("confirm.retry", job_id=job.id, error=str(exc), delay_s=round(delay, 1))
            finally:
                await self.ledger.release([job.id])  # a shared ledger: any node polls it next
            self.on_change()
        return await self.ledger.next_due_in(State.CONFIRMING)

    async def confirm(self, job: Job) -> None:
        """Poll one record once and act on what the server says.

        The answer is about ``job``'s record as it was when asked: every write is
        conditional on the job still being there (``update_current``, the transitions). If its file
        changed meanwhile, the job has gone back to ``waiting`` (its record queued for
        deletion, perhaps a new one made since) and the answer is dropped.
        """
        bound = log.bind(job_id=job.id, path=job.path, record_id=job.record_id)
        if self.upload.confirm == "uploaded":
            await self._done(job, bound)
            return
        assert job.record_id and job.video_id
        data = await self.client.get_record(job.record_id)
        if data is None:
            if await self.ledger.restart_upload(
                job, "record vanished", whole_file=bool(job.whole_file)
            ):
                bound.warning("upload.record_vanished")
            else:
                bound.info("confirm.stale", answer="record vanished")
            return
        state = valt_rules.video_state(data, job.video_id)
        if state is valt_rules.VideoState.READY:
            failpoint("after_ready")
            await self._done(job, bound)
        elif state is valt_rules.VideoState.MISSING:
            # "videos": null - the server lost the bytes: send them again into the same record.
            if await self.ledger.resend(job):
                bound.warning("upload.lost_by_server")
            else:
                bound.info("confirm.stale", answer="no video")
        else:
            await self._not_ready_yet(job, bound)

    async def _not_ready_yet(self, job: Job, bound: object) -> None:
        waited = time.time() - (job.uploaded_at or time.time())
        if waited > self.upload.confirm_timeout:
            detail = (
                f"the server did not report the video ready within "
                f"{waited / 60:.0f} min (upload.confirm_timeout); the source is left in place"
            )
            failed = await self.ledger.fail(job, "not_ready", detail)
            if not failed:
                return  # the job moved on meanwhile
            log.error("job.failed", job_id=job.id, path=job.path, reason="not_ready")
            self.telemetry.job_failed(job.id, job.path, "not_ready", "not ready in time")
            return
        delay = valt_rules.next_confirm_delay(job.confirm_delay)
        await self.ledger.update_current(
            job, confirm_delay=delay, next_attempt_at=time.time() + delay
        )

    async def _done(self, job: Job, bound: Any) -> None:
        # "keep" leaves the file where it is: its after-upload action is done with "done"
        # itself, one commit instead of two.
        kept = self.after_upload.action == "keep"
        if not await self.ledger.confirmed(job, time.time(), kept=kept):
            bound.info("confirm.stale", answer="ready")
            return
        # The one info line of a file: what file.ready, record.created and upload.completed
        # (debug) told, from the job row as read (no ledger trip for it).
        seconds = _upload_seconds(job)
        log.info(
            "job.done",
            job_id=job.id,
            path=job.path,
            name=job.record_name,
            record_id=job.record_id,
            size=job.size,
            sha256=job.sha256,
            seconds=None if seconds is None else round(seconds, 3),
            mb_per_s=round(job.size / 1e6 / seconds, 2) if seconds else None,
        )
        self.telemetry.job_done(job.id, job.path, job.record_id)
        failpoint("before_after_action")
        if not kept:
            await self.after_done(job)


def _upload_seconds(job: Job) -> float | None:
    """The upload's time, as upload.completed measured it; None if no upload of this job
    sent the bytes (a record adopted after a restore: its ``bytes_acked`` is 0)."""
    if job.uploaded_at is None or job.upload_started_at is None or job.bytes_acked != job.size:
        return None
    return max(0.0, job.uploaded_at - job.upload_started_at)


class PartialSweeper:
    """Deletes the partial records queued in the ledger, retrying until the server agrees."""

    def __init__(self, *, upload: UploadConfig, ledger: JobLedger, client: ValtClient) -> None:
        self.upload = upload
        self.ledger = ledger
        self.client = client
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            self.wake.clear()
            await wait_any(stop, self.wake, 2.0)

    async def sweep(self) -> int:
        """Try every due deletion once; return how many are left."""
        for item in await self.ledger.due_deletions(time.time()):
            if self.client.login_blocked_for() > 0 or self.client.outage.down:
                break
            try:
                existed = await self.client.delete_record(item.record_id)
            except (AuthFailed, ServerUnreachable):
                break
            except (RetryableError, PermanentError) as exc:
                upload = self.upload
                delay = backoff_delay(item.attempts + 1, upload.backoff_initial, upload.backoff_max)
                await self.ledger.deletion_failed(item.id, time.time() + delay, str(exc))
                continue
            await deletion_done(self.ledger, item, existed, log)
        return await self.ledger.pending_deletions()


async def deletion_done(ledger: JobLedger, item: Deletion, existed: bool, logger: Any) -> None:
    """The server took a queued partial record's delete: take it off the queue, say so."""
    failpoint("after_delete_response")
    await ledger.deletion_done(item.id)
    logger.info(
        "record.deleted",
        record_id=item.record_id,
        job_id=item.job_id,
        reason=item.reason,
        existed=existed,
    )
