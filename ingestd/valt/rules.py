"""Everything ingestd assumes about the Valt server, in one place.

Facts come from the vendor's page and client (see valt-api.md in the design
notes); the rest are *assumptions* no public material confirms. When a live
server disagrees, this is the module to change. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ingestd.logs import redact_text

# --- facts -----------------------------------------------------------------

API_PREFIX = "/api/v3"
# The vendor's client logs in again every 8 hours and after any 401.
RELOGIN_INTERVAL = 8 * 3600.0
# The multipart form field that carries the bytes.
UPLOAD_FIELD = "file"
# A video is done once the server reports this status type.
READY_STATUS = "ready"
# Failures worth retrying; every other 4xx is permanent.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Valt always has ``POST login``: a server that has no such route (404), refuses the
# method (405) or implements no POST (501) is another server, or valt.url is not the base.
NOT_VALT_LOGIN_STATUSES = frozenset({404, 405, 501})


def is_retryable_status(status: int) -> bool:
    """Connection-level trouble, 408, 429 and every 5xx are worth another try."""
    return status in RETRYABLE_STATUSES or status >= 500


def content_range(start: int, end: int, total: int) -> str:
    """``Content-Range`` for bytes ``[start, end)``: the *inclusive* end of RFC 9110.

    The vendor's page shows ``bytes 0-316620/316620`` (off by one); its client
    sends ``0-(size-1)/size``, which is what we send.
    """
    return f"bytes {start}-{end - 1}/{total}"


# --- assumptions: chunked uploads ------------------------------------------
# - chunks are separate POSTs, in order, with the same TOTAL;
# - a chunk starting at the bytes held is appended;
# - a chunk wholly inside what is held is a harmless 2xx no-op (a repeat after
#   a lost answer);
# - a chunk starting beyond what is held is refused with a 4xx;
# - no call tells how many bytes the server holds.

# A 413 means the chunk is too large for the server's body limit: halve it,
# but never below this.
MIN_CHUNK_AFTER_413 = 1024 * 1024


def smaller_chunk(current: int) -> int | None:
    """The chunk size to try after a 413 on ``current``, or None when none is left."""
    if current <= MIN_CHUNK_AFTER_413:
        return None
    return max(MIN_CHUNK_AFTER_413, current // 2)


def chunk_spans(start: int, total: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` spans from ``start`` to ``total``; ``chunk_size`` 0 = one span.

    A zero-byte file is one empty request (``bytes 0--1/0`` is not valid, so the
    caller must handle size 0 itself: see ``EMPTY_FILE_RANGE``).
    """
    if chunk_size <= 0:
        chunk_size = max(total - start, 1)
    position = start
    while position < total:
        end = min(total, position + chunk_size)
        yield position, end
        position = end


# Assumption: an empty file is sent as one request with this range. RFC 9110
# has no inclusive form for zero bytes; "bytes */0" is its unsatisfied-range form.
EMPTY_FILE_RANGE = "bytes */0"


class Refusal(enum.Enum):
    """What a 4xx refusal of a chunk (other than 401/413) tells us to do."""

    # The server will not take this file at all: fail the job.
    FAIL = "fail"
    # The resumed chunk was refused: delete the partial record, start again from 0.
    RESTART = "restart"
    # A later chunk was refused after earlier ones were taken: the server may not
    # support chunking. Delete, recreate, send the whole file in one request.
    WHOLE_FILE = "whole_file"


def classify_refusal(*, start: int, first_in_attempt: bool, whole_file: bool) -> Refusal:
    """Decide what a refused chunk means (valt-api.md, "Upload the file")."""
    if whole_file or start == 0:
        return Refusal.FAIL
    if first_in_attempt:
        return Refusal.RESTART
    return Refusal.WHOLE_FILE


# How many times one job may start its upload over after refusals, before failing.
MAX_RESTARTS = 3

# --- assumptions: finding a record created just before a crash ------------

# The server's clock may differ from ours: records created this long before
# the attempt began still count.
CLOCK_SKEW_MARGIN = 300.0
SEARCH_PAGE = 50
SEARCH_MAX_PAGES = 20


def search_dates(since: float) -> tuple[str, str]:
    """``start_date``/``end_date`` (MM-DD-YYYY) spanning ``since`` to tomorrow.

    One day of slack on each side: the server's idea of "today" may be in
    another time zone.
    """
    start = dt.date.fromtimestamp(since) - dt.timedelta(days=1)
    end = dt.date.today() + dt.timedelta(days=1)
    return start.strftime("%m-%d-%Y"), end.strftime("%m-%d-%Y")


@dataclass(frozen=True, slots=True)
class FoundRecord:
    """A record from a search, with what the search showed of it.

    Nothing public says that a search result carries ``videos`` or the author:
    ``author`` None is "not shown", and ``videos_shown`` tells an absent
    ``videos`` field (unknown) from ``null`` (no content). Neither unknown is
    ever taken for "empty" or "ours".
    """

    record_id: str
    name: str
    created: float | None
    author: str | None
    video_ids: tuple[str, ...] | None  # None = no video content shown
    videos_shown: bool = True


class Candidate(enum.Enum):
    """What ``GET records/{id}`` says of a record our interrupted create may have made."""

    # Exact name, in the time window, "videos": null, and our author where one is shown:
    # an empty record of ours. It may be deleted (and a new one made).
    PROVEN = "proven"
    # Video content, another author, or gone: not an empty record of ours. Left alone.
    NOT_OURS = "not_ours"
    # Emptiness (or the time) not shown: never deleted, reported as a suspected orphan.
    UNPROVEN = "unproven"


def may_be_our_create(
    record: FoundRecord, *, name: str, attempt_started: float, username: str
) -> bool:
    """Search stage: could this record be the one our interrupted create-upload made?

    Exact name (the search is a substring match), and nothing the search shows
    rules it out: a creation time before the attempt began (less the clock-skew
    margin), video content, another author. Whatever it does not show is left
    to :func:`judge_candidate`, on the record itself.
    """
    if record.name != name:
        return False
    if record.created is not None and record.created < attempt_started - CLOCK_SKEW_MARGIN:
        return False
    if record.video_ids:
        return False
    return record.author is None or record.author == username


def judge_candidate(
    found: FoundRecord,
    record_data: Mapping[str, Any] | None,
    *,
    attempt_started: float,
    username: str,
) -> Candidate:
    """Record stage: ``GET records/{id}``'s ``data`` (None: gone) proves a candidate or not."""
    if record_data is None:
        return Candidate.NOT_OURS
    author = _author_name(record_data.get("author"))
    if author is not None and author != username:
        return Candidate.NOT_OURS
    if "videos" not in record_data:
        return Candidate.UNPROVEN
    if record_data["videos"] is not None:
        # Content ([{"id"...}]) is another upload's; an empty list is not the documented
        # "null" of a record whose file never arrived, so it proves nothing either.
        return Candidate.NOT_OURS if parse_video_ids(record_data["videos"]) else Candidate.UNPROVEN
    created = found.created
    if created is None and isinstance(record_data.get("created"), int | float):
        created = float(record_data["created"])
    if created is None:
        return Candidate.UNPROVEN
    if created < attempt_started - CLOCK_SKEW_MARGIN:
        return Candidate.NOT_OURS
    return Candidate.PROVEN


def parse_found_record(raw: Mapping[str, Any]) -> FoundRecord | None:
    """One entry of a search answer, or None when it lacks an id."""
    record_id = raw.get("id")
    if not isinstance(record_id, str | int):
        return None
    created = raw.get("created")
    return FoundRecord(
        record_id=str(record_id),
        name=str(raw.get("name", "")),
        created=float(created) if isinstance(created, int | float) else None,
        author=_author_name(raw.get("author")),
        video_ids=parse_video_ids(raw.get("videos")),
        videos_shown="videos" in raw,
    )


def author_of(record_data: Mapping[str, Any]) -> str | None:
    """Who made a record, from ``GET records/{id}``'s ``data``; None when not shown."""
    return _author_name(record_data.get("author"))


def _author_name(author: object) -> str | None:
    if isinstance(author, str):
        return author
    if isinstance(author, Mapping):
        for key in ("username", "name", "login"):
            if isinstance(author.get(key), str):
                return str(author[key])
    return None


def parse_video_ids(videos: object) -> tuple[str, ...] | None:
    """A record's ``videos`` list as ids; None for ``null``/missing/empty."""
    if not isinstance(videos, list) or not videos:
        return None
    ids: list[str] = []
    for video in videos:
        if isinstance(video, Mapping) and isinstance(video.get("id"), str | int):
            ids.append(str(video["id"]))
        elif isinstance(video, str | int):
            ids.append(str(video))
    return tuple(ids) or None


# --- confirming ------------------------------------------------------------


class VideoState(enum.Enum):
    READY = "ready"
    PROCESSING = "processing"
    MISSING = "missing"  # "videos": null - the server does not have the bytes


def video_state(record_data: Mapping[str, Any], video_id: str) -> VideoState:
    """Where our video stands, from ``GET records/{id}``'s ``data``."""
    videos = record_data.get("videos")
    if not isinstance(videos, list) or not videos:
        return VideoState.MISSING
    for video in videos:
        if not isinstance(video, Mapping):
            continue
        if str(video.get("id")) != video_id and len(videos) > 1:
            continue
        status = video.get("status")
        kind = status.get("type") if isinstance(status, Mapping) else status
        if kind == READY_STATUS:
            return VideoState.READY
        return VideoState.PROCESSING
    return VideoState.MISSING


# The vendor's client polls after 3, 5, 10, 15, 15 s; we start sooner (a small
# file is often ready at once) and grow to a cap of 5 minutes (design.md).
CONFIRM_FIRST_DELAY = 0.25
CONFIRM_GROWTH = 1.6
CONFIRM_MAX_DELAY = 300.0


def next_confirm_delay(previous: float | None) -> float:
    """The wait before the next ``ready`` poll."""
    if previous is None or previous <= 0:
        return CONFIRM_FIRST_DELAY
    return min(CONFIRM_MAX_DELAY, previous * CONFIRM_GROWTH)


# --- answers -----------------------------------------------------------------


# How much of a server's words an error message quotes (design.md: nothing a
# server says is shown unbounded).
MAX_QUOTED = 200


def error_message(body: object, text: str) -> str:
    """The human part of an error answer: JSON ``error.message``, ``data``, or text.

    One line of at most :data:`MAX_QUOTED` characters. Secrets are scrubbed
    where it becomes an exception's message (``errors.IngestdError``); here too,
    before the cut, which could leave half a token no longer recognisable.
    """
    words = redact_text(" ".join(_error_words(body, text).split()))
    return words[:MAX_QUOTED] or "(empty body)"


def _error_words(body: object, text: str) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(body.get("data"), str):
            return str(body["data"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return _html_title(text) or text[: MAX_QUOTED * 4]


def status_message(status: int, body: object, text: str) -> str:
    """``"502 Bad Gateway"``: the status and the server's words, without saying the status twice."""
    message = error_message(body, text)
    return message if message.startswith(str(status)) else f"{status} {message}"


def _html_title(text: str) -> str | None:
    lower = text.lower()
    start = lower.find("<title>")
    end = lower.find("</title>")
    if start != -1 and end > start:
        return text[start + 7 : end].strip()
    start = lower.find("<h1>")
    end = lower.find("</h1>")
    if start != -1 and end > start:
        return text[start + 4 : end].strip()
    return None


# --- assumptions: is the server there at all? ------------------------------
# A request that fails for want of a server (no connection, no answer in time, a TLS
# handshake that fails, a 5xx, a proxy's HTML page included) may be the file's trouble
# or the server's. One cheap probe tells: while the probe fails too, the server is down,
# all server work waits and no attempt counts; when the probe is answered, the failure
# was about that one file and counts toward upload.max_attempts.

# The probe: a GET that any account may make or be refused, changes nothing, and costs
# the server next to nothing. Its 401 or 403 is an answer (valt-api.md: ordinary accounts
# may be refused on admin/*): it proves the server up and never leads to a login.
PROBE_PATH = "/admin/general"
PROBE_CALL = "GET admin/general (probe)"
# Failure reasons (errors.ValtError.reason) that no answer from the application gives.
NO_ANSWER_REASONS = frozenset({"connection", "timeout", "tls"})


def means_server_down(status: int | None, reason: str) -> bool:
    """Whether a failed request may mean the server is down (worth a probe): no answer at
    all, or a 5xx (an application's or a proxy's). A 4xx, 408 and 429 included, is the
    application answering."""
    if status is None:
        return reason in NO_ANSWER_REASONS
    return status >= 500


def probe_says_up(status: int | None) -> bool:
    """The probe's verdict: an answer below 500 (2xx, a redirect, any 4xx, an ``admin/*``
    401 or 403 included) is the server up; no answer (None) or a 5xx is down."""
    return status is not None and status < 500
