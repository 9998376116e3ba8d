"""The assumed chunk rules of ``POST records/{id}/videos/{id}``, held strictly.

See valt-api.md, "Upload the file into the record": the Content-Range end is
inclusive, chunks arrive in order with one TOTAL, a chunk wholly inside what
the server holds is a harmless repeat, and anything else is refused. The
verdict is decided from the header alone, before a byte of the body is taken.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ingestd.fake_valt.state import Video

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass(frozen=True)
class ContentRange:
    """``bytes START-END/TOTAL`` with an inclusive END."""

    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        """How many bytes the chunk must carry."""
        return self.end - self.start + 1


def parse_content_range(header: str | None) -> ContentRange | None:
    """The parsed header, or None if it is missing or not a valid byte range."""
    if header is None:
        return None
    match = _CONTENT_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    start, end, total = (int(group) for group in match.groups())
    if start > end or end >= total:
        return None
    return ContentRange(start, end, total)


class Action(enum.Enum):
    """What to do with a chunk's bytes."""

    APPEND = enum.auto()
    """Append them: they continue exactly where the video ends."""
    WHOLE = enum.auto()
    """Take them as the whole video (a server without chunking)."""
    REPEAT = enum.auto()
    """Count and discard them: the server holds these bytes already."""
    REFUSE = enum.auto()
    """Discard them and answer 400."""


@dataclass(frozen=True)
class Verdict:
    """The decision on one chunk, and the message of a refusal."""

    action: Action
    message: str = ""
    no_chunking: bool = False
    """The refusal only happens because chunking is switched off."""


ALREADY_UPLOADED = "Video already uploaded"


def judge(video: Video, content_range: ContentRange, *, no_chunking: bool) -> Verdict:
    """Decide a chunk from its Content-Range and what the video holds."""
    if no_chunking:
        # Such a server takes the first request as the whole file and refuses
        # anything after it.
        if content_range.start > 0 or video.received > 0:
            return Verdict(Action.REFUSE, ALREADY_UPLOADED, no_chunking=True)
        return Verdict(Action.WHOLE)
    received = video.received
    if video.total is not None and content_range.total != video.total:
        return Verdict(
            Action.REFUSE,
            f"Content-Range total {content_range.total} differs from the video's "
            f"total {video.total}",
        )
    if content_range.start == received:
        return Verdict(Action.APPEND)
    if content_range.end < received:
        return Verdict(Action.REPEAT)
    if content_range.start > received:
        return Verdict(
            Action.REFUSE,
            f"Chunk starts at byte {content_range.start} but the server holds "
            f"{received} bytes (gap)",
        )
    return Verdict(
        Action.REFUSE,
        f"Chunk {content_range.start}-{content_range.end} overlaps the end of the "
        f"{received} bytes held",
    )
