"""Which paths ingestd cares about: include/exclude globs and gitignore-style rules.

``include``/``exclude`` are fnmatch globs on single names and match
case-insensitively, because capture PCs export ``CLIP.MP4`` as readily as
``clip.mp4``. ``rules[].match`` is a gitignore-style pattern on the path
relative to the watch root, where ``**`` spans folders (Python 3.11's
``fnmatch`` and ``PurePath.match`` cannot do that).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from pathlib import PurePath

# Matches nothing: an empty include list wants no file, an empty exclude list drops none.
_NEVER = re.compile(r"(?!)")


def _compile_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """Fold the globs into one case-insensitive regex, so a name costs one match call."""
    if not patterns:
        return _NEVER
    alternatives = "|".join(fnmatch.translate(pattern) for pattern in patterns)
    return re.compile(alternatives, re.IGNORECASE)


class PathFilter:
    """The ``watch.include`` / ``watch.exclude`` decision for names and relative paths.

    A file is wanted when its name matches some include glob and no exclude
    glob; a folder is entered unless its name matches an exclude glob (so
    ``.*`` hides ``.trash``). An empty ``include`` wants nothing.
    """

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._include = _compile_globs(self.include)
        self._exclude = _compile_globs(self.exclude)

    def __repr__(self) -> str:
        return f"PathFilter(include={list(self.include)!r}, exclude={list(self.exclude)!r})"

    def wants_file(self, name: str) -> bool:
        """True if a file called ``name`` is a recording to upload."""
        return self._include.match(name) is not None and self._exclude.match(name) is None

    def wants_dir(self, name: str) -> bool:
        """True if a folder called ``name`` may hold recordings (it is not excluded)."""
        return self._exclude.match(name) is None

    def wants_path(self, relpath: PurePath) -> bool:
        """True if every folder of ``relpath`` is wanted and its final name is a wanted file.

        Events from watchfiles arrive as full paths; this applies the same
        pruning to them that :func:`ingestd.intake.walk.iter_files` applies while walking.
        """
        parts = relpath.parts
        if not parts:
            return False
        return all(self.wants_dir(part) for part in parts[:-1]) and self.wants_file(parts[-1])


# --- gitignore-style patterns ---------------------------------------------------------------


def _translate_class(segment: str, start: int) -> tuple[str, int] | None:
    """Translate the ``[...]`` starting at ``segment[start]``; None if it never closes.

    Mirrors fnmatch: ``!`` negates, a ``]`` right after the opening bracket is
    literal. A negated class never matches ``/``, so it cannot cross folders.
    """
    end = start + 1
    if end < len(segment) and segment[end] in "!^":
        end += 1
    if end < len(segment) and segment[end] == "]":
        end += 1
    end = segment.find("]", end)
    if end < 0:
        return None
    body = segment[start + 1 : end].replace("\\", "\\\\")
    body = re.sub(r"([&~|\[])", r"\\\1", body)
    if body.startswith(("!", "^")):
        body = "^/" + body[1:]
    return f"[{body}]", end + 1


def _translate_segment(segment: str) -> str:
    """Translate one folder or file name of a pattern: ``*`` and ``?`` stay inside it."""
    out: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            # Runs of stars inside a name are one ordinary star (gitignore).
            while index < len(segment) and segment[index] == "*":
                index += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and index < len(segment):
            out.append(re.escape(segment[index]))
            index += 1
        elif char == "[" and (translated := _translate_class(segment, index - 1)) is not None:
            out.append(translated[0])
            index = translated[1]
        else:
            out.append(re.escape(char))
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _compile_gitignore(pattern: str) -> re.Pattern[str]:
    """Compile one gitignore-style pattern; cached because rules are tried on every file."""
    dir_only = pattern.endswith("/")
    core = pattern.strip("/")
    if not core:
        raise ValueError(f"empty pattern {pattern!r}")
    # A slash at the start or in the middle anchors the pattern to the root (gitignore).
    anchored = "/" in core or pattern.startswith("/")
    segments = [segment for segment in core.split("/") if segment]
    pieces: list[str] = [] if anchored else ["(?:.*/)?"]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            pieces.append(".*" if last else "(?:.*/)?")
        else:
            pieces.append(_translate_segment(segment) + ("" if last else "/"))
    # Matching a folder matches everything below it, as in gitignore; a
    # trailing slash insists that what matched is a folder.
    pieces.append("/.*" if dir_only else "(?:/.*)?")
    try:
        return re.compile("".join(pieces) + r"\Z", re.IGNORECASE | re.DOTALL)
    except re.error as err:
        raise ValueError(f"bad pattern {pattern!r}: {err}") from err


def gitignore_match(pattern: str, relpath: str) -> bool:
    """True if the gitignore-style ``pattern`` matches ``relpath`` (POSIX, relative to the root).

    ``*``, ``?`` and ``[...]`` stay within one name; ``**`` spans zero or more
    folders (``room-3/**``, ``**/*.mp4``, ``a/**/b``). A pattern without a
    slash matches a name at any depth, a leading ``/`` anchors it to the root,
    a trailing ``/`` matches folders only. A pattern that matches a folder
    matches everything below it. Unlike git, matching is case-insensitive, to
    agree with ``include``/``exclude``; a leading ``!`` is literal (rules pick
    the first match, they do not negate). Raises ValueError for an empty or
    malformed pattern, so configuration can validate patterns by calling it.
    """
    return _compile_gitignore(pattern).match(relpath) is not None
