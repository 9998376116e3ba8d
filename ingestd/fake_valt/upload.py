"""``POST records/{rid}/videos/{vid}``: take one chunk of a video.

The body is streamed part by part to the video's file, never held in memory.
Nothing is final until the whole request has arrived and checks out: a chunk
that is short, long, refused or cut off leaves the video exactly as it was.
"""

from __future__ import annotations

import time

from aiohttp import hdrs, web

from ingestd.fake_valt import bodies
from ingestd.fake_valt.chunks import Action, ContentRange, Verdict, judge, parse_content_range
from ingestd.fake_valt.context import STATE_KEY, ServerState
from ingestd.fake_valt.multipart import MultipartStream, boundary_of
from ingestd.fake_valt.state import PendingAppend, Record, Video

BAD_RANGE = (
    "Missing or malformed Content-Range: expected 'bytes START-END/TOTAL' with an inclusive END"
)
NO_FILE = "Expected multipart/form-data with one 'file' field that has a filename"


async def upload_video(request: web.Request) -> web.StreamResponse:
    """Apply one chunk under the chunk rules; see :mod:`ingestd.fake_valt.chunks`."""
    state = request.app[STATE_KEY]
    record, video = state.store.find_video(
        request.match_info["record_id"], request.match_info["video_id"]
    )
    if record is None:
        return bodies.error(404, "Record not found")
    if video is None:
        return bodies.error(404, "Video not found")
    content_range = parse_content_range(request.headers.get(hdrs.CONTENT_RANGE))
    if content_range is None:
        return bodies.error(400, BAD_RANGE)
    # Counted before the lock: a second sender's chunk waits there while the first is read.
    with state.chunk_in_flight(record.id, video.id):
        async with video.lock:
            if record.id not in state.store.records:  # deleted while this chunk waited
                return bodies.error(404, "Record not found")
            return await _receive(request, state, record, video, content_range)


async def _receive(
    request: web.Request,
    state: ServerState,
    record: Record,
    video: Video,
    content_range: ContentRange,
) -> web.StreamResponse:
    verdict = judge(video, content_range, no_chunking=state.faults.no_chunking)
    takes_bytes = verdict.action in (Action.APPEND, Action.WHOLE)
    pending = PendingAppend(video) if takes_bytes else None
    try:
        try:
            length, filename = await _stream_file_part(request, state, pending)
        except ValueError:  # aiohttp's word for a malformed multipart body
            return bodies.error(400, "Malformed multipart/form-data body")
        problem = _check(request, state, verdict, content_range, length)
        if problem is not None:
            return problem
        if pending is None:
            state.chunk_repeats += 1
            return bodies.empty_ok()
        pending.commit()
        _after_append(state, video, content_range, verdict, filename)
    finally:
        if pending is not None:
            pending.rollback()
    if video.complete:
        return web.json_response({"id": record.id, "videos": [video.id]})
    return bodies.empty_ok()


def _check(
    request: web.Request,
    state: ServerState,
    verdict: Verdict,
    content_range: ContentRange,
    length: int | None,
) -> web.Response | None:
    """The answer for a chunk that must not be applied, or None to go on."""
    if length is None:
        return bodies.error(400, NO_FILE)
    max_body = state.faults.max_body
    if max_body is not None and request.content.total_bytes > max_body:
        # A chunked body has no Content-Length to judge up front; nginx counts it.
        state.dice.count("max_body")
        return bodies.too_large()
    if verdict.action is Action.REFUSE:
        if verdict.no_chunking:
            state.dice.count("no_chunking")
        return bodies.error(400, verdict.message)
    if length != content_range.length:
        return bodies.error(
            400,
            f"Content-Range announces {content_range.length} bytes but the file part "
            f"carries {length}",
        )
    return None


def _after_append(
    state: ServerState,
    video: Video,
    content_range: ContentRange,
    verdict: Verdict,
    filename: str | None,
) -> None:
    """Settle the video's total and, once complete, when it turns ready."""
    if video.total is None:
        # Without chunking the first request is the whole video, whatever TOTAL says.
        video.total = video.received if verdict.action is Action.WHOLE else content_range.total
        video.filename = filename
    if video.complete and video.ready_at is None:
        video.ready_at = time.monotonic() + state.faults.ready_delay


async def _stream_file_part(
    request: web.Request, state: ServerState, pending: PendingAppend | None
) -> tuple[int | None, str | None]:
    """Read the whole body; feed the ``file`` part to ``pending``.

    Returns the file part's length and file name, or (None, None) without one.
    Every file byte counts in ``upload_bytes_received``, repeats included.
    """
    if not request.content_type.startswith("multipart/"):
        return None, None
    body = MultipartStream(request.content, boundary_of(request.headers[hdrs.CONTENT_TYPE]))
    length: int | None = None
    filename: str | None = None

    def take(piece: memoryview) -> None:
        nonlocal length
        length = (length or 0) + len(piece)
        state.upload_bytes_received += len(piece)
        if pending is not None:
            pending.write(piece)

    while (part := await body.next_part()) is not None:
        if part.name == "file" and part.filename and length is None:
            length, filename = 0, part.filename
            await body.stream(take)
        else:
            await body.stream(_ignore)
    return length, filename


def _ignore(_piece: memoryview) -> None:
    pass
