"""Named crash points for tests: ``INGESTD_FAILPOINTS=after_chunk_response:3``.

The process kills itself with SIGKILL (no cleanup, no flush of anything but
our own log stream) the N-th time it passes the named point, exactly as a
power cut or an OOM kill would stop it. Inert unless the variable is set.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

from ingestd.errors import UsageError

ENV_VAR = "INGESTD_FAILPOINTS"

# Every point a test or the crash campaign may name, in the order a job passes them.
FAILPOINTS: tuple[str, ...] = (
    "before_create",  # "creating" committed, create-upload not yet sent
    "after_create_response",  # the server answered create-upload, nothing committed yet
    "after_record_committed",  # record id committed, no chunk sent
    "after_chunk_response",  # a chunk was acknowledged, bytes_acked not yet committed
    "after_chunk_committed",  # bytes_acked committed
    "in_confirming",  # all bytes sent and "confirming" committed
    "after_ready",  # the server said ready, "done" not yet committed
    "before_after_action",  # "done" committed, the file not yet kept/moved/deleted
    "after_move",  # the file was moved to move_to, where it went not yet committed
    "after_delete_response",  # a partial record was deleted, the ledger not yet told
)


def parse_failpoints(spec: str) -> dict[str, int]:
    """``"a:3,b"`` -> ``{"a": 3, "b": 1}``; unknown names are a usage error."""
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in FAILPOINTS:
            raise UsageError(
                f"{ENV_VAR}: unknown failpoint {name!r} (known: {', '.join(FAILPOINTS)})"
            )
        try:
            hits = int(count) if count else 1
        except ValueError:
            raise UsageError(f"{ENV_VAR}: {item!r} needs a whole number after ':'") from None
        if hits < 1:
            raise UsageError(f"{ENV_VAR}: {item!r} needs a count of at least 1")
        points[name] = hits
    return points


class _Failpoints:
    def __init__(self) -> None:
        self.targets: dict[str, int] = {}
        self.passes: dict[str, int] = {}

    def load(self, environ: Mapping[str, str]) -> None:
        self.targets = parse_failpoints(environ.get(ENV_VAR, ""))
        self.passes = {}

    def hit(self, name: str) -> None:
        target = self.targets.get(name)
        if target is None:
            return
        self.passes[name] = self.passes.get(name, 0) + 1
        if self.passes[name] == target:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


_state = _Failpoints()


def load_failpoints(environ: Mapping[str, str] | None = None) -> None:
    """Read the failpoints from the environment (once, at start-up)."""
    _state.load(os.environ if environ is None else environ)


def failpoint(name: str) -> None:
    """Pass the named point: a no-op unless a test armed it."""
    if _state.targets:
        _state.hit(name)
