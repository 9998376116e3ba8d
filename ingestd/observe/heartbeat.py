"""The daemon's heartbeat in the ledger, and what ``ingestd status`` makes of it.

The daemon writes one every :data:`HEARTBEAT_EVERY` seconds: its pid, since when it
runs, and the health look of that moment (``/healthz``'s problems, the server's state,
each watch folder's). ``status`` runs in another process and reads only the ledger and
the lock file, so this is how it tells a running daemon from a stopped or a hung one.

Nothing here loads aiohttp or the daemon: ``status`` imports this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ingestd.ledger.model import Heartbeat

HEARTBEAT_EVERY = 5.0
# Three beats missed: the daemon is not answering (a busy ledger may delay one beat).
STALE_AFTER = 3 * HEARTBEAT_EVERY


def make_beat(
    *,
    started_at: float,
    once: bool,
    problems: Sequence[str],
    health: Mapping[str, Any],
    stopped_at: float | None = None,
) -> Heartbeat:
    """A heartbeat of this process from the health look (``page_data.health_of``): the
    server's ``state`` and ``detail``, and each folder's label (``folder``) and ``state``,
    whatever states the look knows."""
    server = health.get("server", {})
    return Heartbeat(
        pid=os.getpid(),
        started_at=started_at,
        beat_at=time.time(),
        mode="once" if once else "daemon",
        problems=tuple(problems),
        server=str(server.get("state", "unknown")),
        server_detail=str(server.get("detail", "")),
        folders={str(f["folder"]): str(f["state"]) for f in health.get("folders", [])},
        stopped_at=stopped_at,
    )


@dataclass(frozen=True)
class DaemonState:
    """Whether a daemon runs on this ledger, as far as the lock file and the heartbeat tell."""

    state: str
    """``running``, ``not responding`` (holds the lock, stopped beating) or ``not running``."""
    pid: int | None
    beat: Heartbeat | None
    beat_age: float | None

    @property
    def running(self) -> bool:
        return self.state == "running"


def daemon_state(holder: int | None, beat: Heartbeat | None, now: float) -> DaemonState:
    """``holder`` is the pid the lock file names (its last taker, alive or not).

    Running: that process is alive and its own heartbeat is fresh. Alive with a stale
    heartbeat of its own: not responding. Anything else (no lock file, a dead pid, a pid
    reused by another program, a clean stop) is not running.
    """
    age = None if beat is None else max(0.0, now - beat.beat_at)
    own = beat is not None and holder is not None and beat.pid == holder
    if holder is None or not own or not process_alive(holder) or beat is None or beat.stopped_at:
        return DaemonState("not running", holder, beat, age)
    if age is not None and age > STALE_AFTER:
        return DaemonState("not responding", holder, beat, age)
    return DaemonState("running", holder, beat, age)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process (the daemon's user is not ours)
    return True
