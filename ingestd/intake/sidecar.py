"""Sidecar files: one recording's metadata, written next to it by the capture software.

For ``clip.mp4`` the candidates are, in this order, and the first that exists
wins: ``clip.mp4.json``, ``clip.mp4.yaml``, ``clip.mp4.yml``, ``clip.json``,
``clip.yaml``, ``clip.yml`` (each suffix also in upper case, as capture PCs
write ``CLIP.JSON``). The full-name form comes first because it belongs to
one video only, where ``clip.json`` is also ``clip.mov``'s.

A sidecar is a mapping with any of ``name``, ``template`` (field id -> value)
and ``share`` (``users``/``groups``: ids or names). Its values are literal
text, never placeholder templates: a sidecar is written for one file by a tool
that already knows the values, and a ``{`` in a case title must not break an
upload. Anything else (an unknown key, a wrong type, bad syntax, an empty
file) makes the sidecar malformed.

A sidecar must settle like its video (the issue: "a half-written one means
wait"): :func:`sidecar_wait_reason` gives a reason to wait while it changed
within ``settle``, or is malformed but younger than :data:`MALFORMED_GRACE`.
One that stays malformed fails its job (reason ``bad_sidecar``) rather than
uploading with the wrong metadata.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ingestd.config.values import Principals, principals, template_fields
from ingestd.disk.judged import FileSnapshot, OpenRule, look, open_judged, open_now
from ingestd.errors import FileRefused, SidecarError
from ingestd.units import describe, format_duration

__all__ = [
    "MALFORMED_GRACE",
    "Sidecar",
    "SidecarVerdict",
    "examine_sidecar",
    "find_sidecar",
    "read_sidecar",
    "sidecar_age",
    "sidecar_candidates",
    "sidecar_paths",
    "sidecar_wait_reason",
]

SUFFIXES = (".json", ".JSON", ".yaml", ".YAML", ".yml", ".YML")
#: A malformed sidecar younger than this (or than ``settle``, if longer) is still being written.
MALFORMED_GRACE = 10.0
#: An mtime further in the future than this is a skewed clock, not a fresh write.
FUTURE_SLACK = 60.0
MAX_SIDECAR_BYTES = 1024 * 1024
#: Deeper flow nesting than this is refused before parsing (a sidecar nests two levels).
MAX_NESTING = 100
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
KEYS = ("name", "template", "share")
SHARE_KINDS = ("users", "groups")

# A sidecar looked at by hand (tests, tools): symlinks are not followed, no watch folder.
_BY_HAND = OpenRule()


@dataclass(frozen=True, slots=True)
class Sidecar:
    """A parsed sidecar; None (or an empty template) means "not set, keep the config's"."""

    path: Path
    name: str | None = None
    template: Mapping[str, str] = field(default_factory=dict)
    users: Principals | None = None
    groups: Principals | None = None


# --- finding ------------------------------------------------------------------------------------


def sidecar_candidates(video: Path) -> list[Path]:
    """Every path a sidecar of ``video`` may have, in the order they are preferred."""
    bases = [video.name]
    if video.suffix and video.stem:
        bases.append(video.stem)
    return [video.with_name(base + suffix) for base in bases for suffix in SUFFIXES]


def _existing(video: Path, rule: OpenRule) -> list[tuple[Path, os.stat_result]]:
    """The candidates that are regular files, once each (a case-insensitive share
    shows ``clip.json`` and ``clip.JSON`` as one file). A symlink counts only with
    ``watch.follow_symlinks`` (judged.py)."""
    found: list[tuple[Path, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()
    for path in sidecar_candidates(video):
        try:
            info = look(path, follow_symlinks=rule.follow_symlinks)
        except OSError:
            continue
        if info is None:
            continue
        if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            found.append((path, info))
    return found


def find_sidecar(video: Path, rule: OpenRule = _BY_HAND) -> tuple[Path, os.stat_result] | None:
    """The sidecar that applies to ``video`` (the first candidate present) and its stat."""
    found = _existing(video, rule)
    return found[0] if found else None


def sidecar_paths(video: Path, rule: OpenRule = _BY_HAND) -> list[Path]:
    """Every sidecar file present for ``video``, for the after-upload action to move or
    delete along with it. Includes candidates that lost to an earlier one."""
    return [path for path, _info in _existing(video, rule)]


def sidecar_age(info: os.stat_result, now: float) -> float:
    """Seconds since the sidecar last changed (``now`` is wall-clock, ``time.time()``).

    An mtime far in the future is a skewed clock (an SMB share, a capture PC
    without NTP) and counts as long settled, or the video would wait forever.
    """
    age = now - info.st_mtime
    return math.inf if age < -FUTURE_SLACK else max(age, 0.0)


# --- reading ------------------------------------------------------------------------------------


def read_sidecar(
    path: Path, rule: OpenRule = _BY_HAND, judged: os.stat_result | None = None
) -> Sidecar:
    """Parse the sidecar at ``path``; SidecarError says what is wrong with it, naming a key
    or a line, never quoting the file's content (it may be a link to a private file).

    ``judged``: the stat the sidecar was found with; the file read must be that one.
    FileNotFoundError passes through: a sidecar deleted meanwhile is no sidecar.
    """
    return _parse(path, _decode(path, rule, judged))


def _decode(path: Path, rule: OpenRule, judged: os.stat_result | None) -> object:
    try:
        if judged is None:
            fd, _snap = open_now(path, rule)
        else:
            fd = open_judged(path, FileSnapshot.of(judged), rule)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_SIDECAR_BYTES + 1)
    except FileNotFoundError:
        raise
    except FileRefused as exc:
        raise SidecarError(path.name, f"is not read: {exc}") from None
    except OSError as exc:
        raise SidecarError(path.name, f"cannot be read ({exc.strerror or exc})") from None
    try:
        return _load(path, raw)
    except RecursionError:
        # Nesting deep enough to exhaust the parser ('[' * 100000): that file's
        # outcome, never the settle loop's (issue 11).
        raise SidecarError(path.name, "is nested too deeply to read") from None


def _load(path: Path, raw: bytes) -> object:
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(path.name, "is larger than 1 MiB")
    try:
        text = raw.decode("utf-8-sig")  # Windows tools write a BOM
    except UnicodeDecodeError:
        raise SidecarError(path.name, "is not UTF-8 text") from None
    if not text.strip():
        raise SidecarError(path.name, "is empty")
    if _bracket_depth(text) > MAX_NESTING:
        raise RecursionError  # cheaper than letting the parser run out of stack
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            # json's messages ("Expecting value") never quote the text.
            where = f"line {exc.lineno}, column {exc.colno}"
            raise SidecarError(path.name, f"is not valid JSON: {exc.msg} ({where})") from None
        except ValueError:  # a number of more than 4300 digits
            raise SidecarError(path.name, "is not valid JSON (a number too long)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SidecarError(path.name, f"is not valid YAML{_yaml_where(exc)}") from None
    except RecursionError:
        raise
    except Exception:  # PyYAML's constructors raise ValueError and others ("2024-13-45")
        raise SidecarError(path.name, "is not valid YAML (a value it cannot read)") from None


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` (quoting ignored: a sidecar is small and flat)."""
    depth = deepest = 0
    for bracket in _NOT_BRACKETS.sub("", text):
        depth = depth + 1 if bracket in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Where PyYAML stopped. Its own words are left out: they quote the text
    ("found undefined alias 'x'"), and the text may be a private file's."""
    mark = exc.problem_mark if isinstance(exc, yaml.MarkedYAMLError) else None
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def _parse(path: Path, data: object) -> Sidecar:
    file = path.name
    if not isinstance(data, dict):
        raise SidecarError(
            file, f"must be a mapping with name, template or share (got {_what(data)})"
        )
    if any(key not in KEYS for key in data):
        raise SidecarError(file, f"has an unknown key (allowed: {', '.join(KEYS)})")
    name = _name(data.get("name"), file)
    template = _template(data.get("template"), file)
    share = data.get("share")
    if share is None:
        return Sidecar(path, name, template)
    if not isinstance(share, dict):
        raise SidecarError(file, f"share must be a mapping with users/groups (got {_what(share)})")
    if any(key not in SHARE_KINDS for key in share):
        raise SidecarError(file, "share has an unknown key (allowed: users, groups)")
    users = _principals(share.get("users"), "share.users", file) if "users" in share else None
    groups = _principals(share.get("groups"), "share.groups", file) if "groups" in share else None
    return Sidecar(path, name, template, users, groups)


def _text(value: object) -> str | None:
    """Strings and numbers are text (YAML reads ``name: 2024`` as a number); nothing else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _name(value: object, file: str) -> str | None:
    if value is None:
        return None
    text = _text(value)
    if text is None or not text.strip():
        raise SidecarError(file, f"name must be non-empty text (got {_what(value)})")
    return text.strip()


def _template(value: object, file: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SidecarError(file, f"template must map field ids to values (got {_what(value)})")

    def field_text(raw: object, field_id: str) -> str:
        text = "" if raw is None else _text(raw)
        if text is None:
            raise SidecarError(file, f"template.{field_id} must be text (got {_what(raw)})")
        return text

    return template_fields(
        value,
        bad_id=lambda raw: SidecarError(
            file, f"template field ids must be numbers such as 12 (got {_what(raw)})"
        ),
        text=field_text,
    )


def _principals(value: object, key: str, file: str) -> Principals:
    return principals(
        value,
        lambda _, item: SidecarError(file, f"{key} takes id numbers or names (got {_what(item)})"),
    )


def _what(value: object) -> str:
    """The kind of a value, never the value: a sidecar may be a link to a private file."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return describe(value) if isinstance(value, dict | list) else type(value).__name__


# --- settling -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidecarVerdict:
    """What to do about a video's sidecar: use ``sidecar`` (None: there is none), wait
    (``wait`` says why), or give up on a malformed one (``error``)."""

    sidecar: Sidecar | None = None
    wait: str | None = None
    error: SidecarError | None = None


def examine_sidecar(
    video: Path, settle: float, now: float, rule: OpenRule = _BY_HAND
) -> SidecarVerdict:
    """Find, age and parse ``video``'s sidecar (``now`` is wall-clock, ``time.time()``).

    Wait while it changed within ``settle``, or while it is malformed but younger
    than ``max(settle, MALFORMED_GRACE)``; older and still malformed, it is an error.
    Wait reasons read the same on every call while the cause lasts, so the
    settle loop records and logs each once.
    """
    found = find_sidecar(video, rule)
    if found is None:
        return SidecarVerdict()
    path, info = found
    age = sidecar_age(info, now)
    if age < settle:
        return SidecarVerdict(
            wait=f"sidecar {path.name} changed within the last {format_duration(settle)}"
        )
    try:
        return SidecarVerdict(sidecar=read_sidecar(path, rule, info))
    except FileNotFoundError:
        return SidecarVerdict()
    except SidecarError as exc:
        if age < max(settle, MALFORMED_GRACE):
            return SidecarVerdict(wait=f"sidecar {path.name} is not valid yet ({exc.problem})")
        return SidecarVerdict(error=exc)


def sidecar_wait_reason(
    video: Path, settle: float, now: float, rule: OpenRule = _BY_HAND
) -> str | None:
    """Why ``video`` must wait for its sidecar, or None when it need not (no sidecar, a
    settled valid one, or one malformed for good: its upload fails ``bad_sidecar``).

    For the settle loop; ``now`` is ``time.time()``, compared with the sidecar's mtime.
    """
    return examine_sidecar(video, settle, now, rule).wait
