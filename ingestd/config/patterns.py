"""Which paths ingestd cares about: include/exclude globs and gitignore-style rules.

``include``/``exclude`` are fnmatch globs on single names and match
case-insensitively, because capture PCs export ``CLIP.MP4`` as readily as
``clip.mp4``. ``rules[].match`` is a gitignore-style pattern on the path
relative to the watch root, where ``**`` spans folders (Python 3.11's
``fnmatch`` and ``PurePath.match`` cannot do that); the ``pathspec`` library
translates it.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import PurePath

import pathspec

# Matches nothing: an empty include list wants no file, an empty exclude list drops none.
_NEVER = re.compile(r"(?!)")


def _compile_globs(patterns: Sequence[str]) -> re.Pattern[str]:
    """Fold the globs into one case-insensitive regex, so a name costs one match call."""
    if not patterns:
        return _NEVER
    alternatives = "|".join(fnmatch.translate(pattern) for pattern in patterns)
    return re.compile(alternatives, re.IGNORECASE)


# A glob list as plain tests on a lower-cased ASCII name: suffixes (``*.mp4``), prefixes
# (``.*``) and whole names; what the regex would say, at a fraction of its cost per name.
_Edges = tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]


def _plain_edges(patterns: Sequence[str]) -> _Edges | None:
    """The globs as :data:`_Edges` when every one is that simple and ASCII (None: some glob
    needs the regex: a class, a ``?``, a ``*`` inside, a letter case-folding may widen)."""
    suffixes: list[str] = []
    prefixes: list[str] = []
    names: list[str] = []
    for pattern in patterns:
        if not pattern.isascii() or "[" in pattern or "?" in pattern:
            return None
        stars = pattern.count("*")
        if stars == 0:
            names.append(pattern.lower())
        elif stars == 1 and pattern.startswith("*"):
            suffixes.append(pattern[1:].lower())
        elif stars == 1 and pattern.endswith("*"):
            prefixes.append(pattern[:-1].lower())
        else:
            return None
    return tuple(suffixes), tuple(prefixes), frozenset(names)


def _single_extensions(*suffix_lists: tuple[str, ...]) -> bool:
    """Every suffix is one extension: ``.mp4``, not ``.tar.gz``, ``~`` or empty."""
    return all(s[:1] == "." and s.count(".") == 1 for suffixes in suffix_lists for s in suffixes)


def _plain_test(include: _Edges, exclude: _Edges) -> Callable[[str], bool]:
    """:meth:`PathFilter.wants_file` for an ASCII name, by string tests. When every
    suffix is one extension (``*.mp4``, not ``*.tar.gz``, ``*~`` or ``*``) and include has
    only suffixes (the defaults), a name's last extension is looked up in a set."""
    suffixes, prefixes, names = include
    no_suffixes, no_prefixes, no_names = exclude
    head = max((len(prefix) for prefix in no_prefixes), default=0)
    if not prefixes and not names and _single_extensions(suffixes, no_suffixes):
        wanted = frozenset(suffixes) - frozenset(no_suffixes)

        def by_extension(name: str) -> bool:
            extension = name[name.rfind(".") :] if "." in name else ""
            if extension not in wanted and extension.lower() not in wanted:
                return False
            if no_prefixes and name[:head].lower().startswith(no_prefixes):
                return False
            return not no_names or name.lower() not in no_names

        return by_extension

    def by_edges(name: str) -> bool:
        low = name.lower()
        return (low.endswith(suffixes) or low.startswith(prefixes) or low in names) and not (
            low.endswith(no_suffixes) or low.startswith(no_prefixes) or low in no_names
        )

    return by_edges


def _by_extension(
    include: _Edges | None, exclude: _Edges | None
) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """(extensions, prefixes) when the globs come to this: a name is wanted if its last
    extension, as it is, is one of these, and it starts with none of the prefixes (which
    have no letters, so case does not matter). A name whose extension is not found may
    still be wanted (``CLIP.MP4``): ask :meth:`PathFilter.wants_file`. None: the globs
    are not of that kind. For a walker that asks of a million names."""
    if include is None or exclude is None:
        return None
    suffixes, prefixes, names = include
    no_suffixes, no_prefixes, no_names = exclude
    if prefixes or names or no_names or any(p.lower() != p.upper() for p in no_prefixes):
        return None
    if not _single_extensions(suffixes, no_suffixes):
        return None
    return frozenset(suffixes) - frozenset(no_suffixes), no_prefixes


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
        # A scan asks of every name (a million files: a million times): ASCII names are
        # judged by plain string tests when the globs allow it.
        include_edges, exclude_edges = _plain_edges(self.include), _plain_edges(self.exclude)
        self._plain = (
            None
            if include_edges is None or exclude_edges is None
            else _plain_test(include_edges, exclude_edges)
        )
        self.by_extension = _by_extension(include_edges, exclude_edges)

    def __repr__(self) -> str:
        return f"PathFilter(include={list(self.include)!r}, exclude={list(self.exclude)!r})"

    def wants_file(self, name: str) -> bool:
        """True if a file called ``name`` is a recording to upload."""
        if self._plain is not None and name.isascii():
            return self._plain(name)
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

    def why_unwanted(self, relpath: PurePath) -> str | None:
        """Why :meth:`wants_path` refuses ``relpath``, naming the key and the glob (for
        ``ingestd plan``); None when it is wanted."""
        parts = relpath.parts
        for part in parts[:-1]:
            if not self.wants_dir(part):
                glob = _first_match(self.exclude, part)
                return f"in folder {part}, excluded by watch.exclude {glob!r}"
        if not parts:
            return "not a file"
        name = parts[-1]
        if self._exclude.match(name) is not None:
            return f"excluded by watch.exclude {_first_match(self.exclude, name)!r}"
        if self._include.match(name) is None:
            return f"not matched by watch.include ({', '.join(self.include) or 'empty'})"
        return None


def _first_match(patterns: Sequence[str], name: str) -> str:
    """The first glob of ``patterns`` that matches ``name`` (as :class:`PathFilter` does)."""
    for pattern in patterns:
        if re.match(fnmatch.translate(pattern), name, re.IGNORECASE):
            return pattern
    return "?"


# --- gitignore-style patterns, by pathspec ------------------------------------------------


def _class_end(segment: str, start: int) -> int:
    """Where the class opened by the ``[`` at ``segment[start]`` ends (past its ``]``), or
    -1 if it never closes: fnmatch's rule, where a ``!`` or ``^`` first negates and a
    ``]`` right after them is literal."""
    end = start + 1
    if end < len(segment) and segment[end] in "!^":
        end += 1
    if end < len(segment) and segment[end] == "]":
        end += 1
    end = segment.find("]", end)
    return end + 1 if end >= 0 else -1


def _escape_segment(segment: str) -> str:
    """Make literal a ``[`` that never closes within its name, and a backslash ending it."""
    out: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "\\":  # a backslash ending the name is literal, as in fnmatch
            out.append(segment[index : index + 2] if index + 1 < len(segment) else "\\\\")
            index += 2
        elif char == "[" and (end := _class_end(segment, index)) > 0:
            out.append(segment[index:end])  # a class is copied whole: "[" in it is literal
            index = end
        else:
            out.append("\\[" if char == "[" else char)
            index += 1
    return "".join(out)


def _literal_edges(pattern: str) -> str:
    """``pattern`` with what gitignore reads specially at its edges made literal: a
    leading ``!`` (negation) or ``#`` (comment), spaces (stripped) and a trailing
    lone backslash (an error)."""
    lead = len(pattern) - len(pattern.lstrip(" "))
    body = pattern[lead:].rstrip(" ")
    trail = len(pattern) - lead - len(body)
    if (len(body) - len(body.rstrip("\\"))) % 2:
        if trail:  # the backslash already escapes the first trailing space
            body, trail = body + " ", trail - 1
        else:
            body += "\\"
    if not lead and body.startswith(("!", "#")):
        body = "\\" + body
    return "\\ " * lead + body + "\\ " * trail


_SLASHES = re.compile("/+")


def _slash_free_classes(regex: str) -> str:
    """``regex`` with a slash added to every negated class: in git a class never
    matches one, where pathspec's ``[!x]`` becomes ``[^x]``."""
    out: list[str] = []
    index, size = 0, len(regex)
    while index < size:
        char = regex[index]
        if char == "\\" or char != "[":
            step = 2 if char == "\\" else 1
            out.append(regex[index : index + step])
            index += step
            continue
        start = index + 1
        negated = regex.startswith("^", start)
        start += negated
        end = start + regex.startswith("]", start)  # a "]" first is literal
        while end < size and regex[end] != "]":
            end += 2 if regex[end] == "\\" else 1
        body = regex[start:end]
        if negated and body[:1] in ("]", "-"):  # no longer first: escaped to stay literal
            body = "\\" + body
        out.append(("[^/" if negated else "[") + body + regex[end : end + 1])
        index = end + 1
    return "".join(out)


@functools.lru_cache(maxsize=512)
def _compile_gitignore(pattern: str) -> re.Pattern[str]:
    """Compile one gitignore-style pattern; cached because rules are tried on every file."""
    if not pattern.strip("/"):
        raise ValueError(f"empty pattern {pattern!r}")
    # Empty names are dropped: "a//b" is "a/b", "//x" is "/x".
    line = _literal_edges("/".join(_escape_segment(part) for part in _SLASHES.split(pattern)))
    try:
        with warnings.catch_warnings():
            # "[[" or "&&" in a class: a literal today, which re warns may change.
            warnings.simplefilter("ignore", FutureWarning)
            compiled = pathspec.GitIgnoreSpec.from_lines([line]).patterns[0]
    except (ValueError, re.error) as err:  # pathspec's pattern errors are ValueErrors
        raise ValueError(f"bad pattern {pattern!r}: {err}") from None
    if not isinstance(compiled, pathspec.RegexPattern) or compiled.regex is None:
        raise ValueError(f"bad pattern {pattern!r}")
    regex = _slash_free_classes(compiled.regex.pattern)
    # Unlike git, case-insensitive, to agree with include/exclude (CLIP.MP4 is clip.mp4).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(regex, re.IGNORECASE | re.DOTALL)
    except re.error as err:
        raise ValueError(f"bad pattern {pattern!r}: {err}") from None


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
    return _compile_gitignore(pattern).search(relpath) is not None
