"""The state of a watch folder: present, missing, unreadable or unmounted.

A share that vanished (unmounted, renamed away, a network mount that dropped)
must not look like an empty folder: the files in it would count as gone.
Intake leaves what it knows of a folder that is not present alone until it is
back; health, ``ingestd status``, a metric and an alert report it.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Sequence
from pathlib import Path


class FolderState(enum.StrEnum):
    PRESENT = "present"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    UNMOUNTED = "unmounted"


def folder_state(path: Path, *, require_mount: bool) -> FolderState:
    """Look at one watch folder (blocking: a hung network mount hangs here, so callers run
    it in a thread with a timeout or alongside other file system work)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return FolderState.MISSING
    except OSError:
        return FolderState.UNREADABLE  # a parent it may not search, a stale handle (EIO)
    if not stat.S_ISDIR(info.st_mode):
        return FolderState.MISSING  # a file where the folder should be
    if require_mount and not os.path.ismount(path):
        return FolderState.UNMOUNTED  # the mount point's own, empty folder
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError:
        return FolderState.UNREADABLE
    return FolderState.PRESENT


def folder_states(paths: Sequence[Path], *, require_mount: bool) -> list[FolderState]:
    return [folder_state(path, require_mount=require_mount) for path in paths]


_MEANING = {
    FolderState.MISSING: "is missing",
    FolderState.UNREADABLE: "cannot be read (check its permissions, or the share)",
    FolderState.UNMOUNTED: "is not a mount point (watch.require_mount: the share is not mounted)",
}


def folder_problem(label: str, state: FolderState, path: Path | None) -> str:
    """One sentence for a folder that is not present; ``path`` None to leave it out."""
    where = label if path is None else f"{label} ({path})"
    return f"watch folder {where} {_MEANING[state]}: files in it wait until it is back"
