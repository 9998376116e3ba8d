"""A shared ledger's paths: the same file, whichever host mounts the share where.

Each node mounts the share at a path of its own; the ledger stores a file as
``NAME/relative/path`` (``NAME``: its watch folder's ``name``) and a folder as
``NAME``, and each node reads them back as its own absolute paths. A path that
lies under no watch folder (a ``done_to`` folder elsewhere) is stored as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class PathMap:
    """Between this node's absolute paths and the ledger's portable ones."""

    def __init__(self, roots: Mapping[str, str]) -> None:
        # name -> this node's absolute path of the folder (no trailing slash)
        self.roots = {name: root.rstrip("/") or "/" for name, root in roots.items()}
        # Longest first: a folder inside another is matched before its parent.
        self._by_length = sorted(self.roots.items(), key=lambda item: -len(item[1]))

    @property
    def names(self) -> list[str]:
        return sorted(self.roots)

    def portable(self, path: str) -> str:
        """``/mnt/a/room-1/x.mp4`` -> ``export/room-1/x.mp4`` (unchanged if under no folder)."""
        for name, root in self._by_length:
            if path == root:
                return name
            if path.startswith(root + "/"):
                return name + path[len(root) :]
        return path

    def local(self, stored: str) -> str:
        """The reverse of :meth:`portable`. A folder this node does not watch stays as it
        is (relative, so it can never name a local file)."""
        if stored.startswith("/"):
            return stored
        name, _, rest = stored.partition("/")
        root = self.roots.get(name)
        if root is None:
            return stored
        return root + ("/" + rest if rest else "")

    def parameters(self, values: Sequence[Any]) -> list[Any]:
        """A statement's parameters with every local path made portable (a bool as the
        integer the columns hold)."""
        out: list[Any] = []
        for value in values:
            if isinstance(value, str) and value.startswith("/"):
                value = self.portable(value)
            elif isinstance(value, bool):
                value = int(value)
            out.append(value)
        return out


# The columns that hold paths (translated in every row read).
PATH_COLUMNS = frozenset({"path", "root", "final_path"})
# The columns that hold a device number: another host's numbers mean nothing here, so
# every row reads them as ANY_DEVICE (disk/judged.py), which compares equal to any.
DEVICE_COLUMNS = frozenset({"device", "final_device"})
