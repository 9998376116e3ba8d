"""``ingestd check --probe-upload``: a tiny real upload, to learn what the server accepts.

Sends a small valid MP4 in two chunks into a new record, waits for the
server to report it ready, and deletes the record again. A server that
refuses the second chunk does not support chunked uploads: ingestd then
sends such files whole (and says so), and the probe tries that too.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Callable

from ingestd.errors import ChunkRefused, ValtError
from ingestd.intake.mp4_build import mp4_pieces
from ingestd.valt import rules as valt_rules
from ingestd.valt.client import CreatedRecord, ValtClient

PROBE_SIZE = 96 * 1024
READY_WAIT = 60.0

Say = Callable[[bool, str], None]


def probe_bytes() -> bytes:
    return b"".join(mp4_pieces(PROBE_SIZE, piece=16 * 1024))


async def _send(
    client: ValtClient, record: CreatedRecord, data: bytes, start: int, end: int
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield data[start:end]

    await client.upload_chunk(
        record.record_id,
        record.video_id,
        filename="ingestd-probe.mp4",
        content_range=valt_rules.content_range(start, end, len(data)),
        length=end - start,
        pieces=pieces,
    )


async def _wait_ready(client: ValtClient, record: CreatedRecord) -> float | None:
    started = time.monotonic()
    delay: float | None = None
    while time.monotonic() - started < READY_WAIT:
        data = await client.get_record(record.record_id)
        if (
            data is not None
            and valt_rules.video_state(data, record.video_id) is valt_rules.VideoState.READY
        ):
            return time.monotonic() - started
        delay = valt_rules.next_confirm_delay(delay)
        await asyncio.sleep(delay)
    return None


async def _second_chunk(
    client: ValtClient, record: CreatedRecord, data: bytes, name: str, say: Say
) -> tuple[CreatedRecord, bool]:
    """Send the second half; if refused, start over with the whole file in one request."""
    try:
        await _send(client, record, data, len(data) // 2, len(data))
        return record, True
    except ChunkRefused as exc:
        say(
            False,
            f"probe upload: the server refused a second chunk ({exc}); "
            "ingestd will send such files in one request (or set upload.chunk_size: 0)",
        )
    await client.delete_record(record.record_id)
    record = await client.create_upload(name, {}, {"users": [], "groups": []})
    await _send(client, record, data, 0, len(data))
    return record, False


async def probe_upload(client: ValtClient, say: Say, *, chunked: bool = True) -> None:
    """Run the probe; ``say(ok, text)`` reports each finding.

    ``chunked`` False (``upload.chunk_size: 0``) sends the file in one request.
    """
    data = probe_bytes()
    name = f"ingestd probe from {socket.gethostname()} (safe to delete)"
    half = len(data) // 2 if chunked else len(data)
    record = await client.create_upload(name, {}, {"users": [], "groups": []})
    try:
        await _send(client, record, data, 0, half)
        if chunked:
            record, chunked = await _second_chunk(client, record, data, name, say)
        seconds = await _wait_ready(client, record)
        if seconds is None:
            say(False, f"probe upload: the video was not ready within {READY_WAIT:.0f} s")
        elif chunked:
            digest = hashlib.sha256(data).hexdigest()[:12]
            say(
                True,
                f"probe upload: two chunks accepted, video ready after {seconds:.1f} s "
                f"(sha256 {digest}...)",
            )
        else:
            say(True, f"probe upload: whole-file upload accepted, ready after {seconds:.1f} s")
    except ValtError as exc:
        say(False, f"probe upload failed: {exc}")
    finally:
        try:
            await client.delete_record(record.record_id)
            say(True, "probe upload: the probe record was deleted")
        except ValtError as exc:
            say(False, f"probe upload: delete the record named {name!r} by hand ({exc})")
