"""What health and metrics read of the daemon they report on: a read-only view.

observe/ never imports the daemon; the daemon implements :class:`DaemonView`.
"""

from __future__ import annotations

from typing import Protocol

from ingestd.ledger.api import JobLedger


class OutageView(Protocol):
    """Whether the server is down (valt/outage.py)."""

    @property
    def since(self) -> float | None:
        """Wall time the outage began; None while the server answers."""
        ...

    def describe(self) -> str:
        """One stable sentence: unreachable since when, and why."""
        ...


class ServerContact(Protocol):
    """What the Valt client last learnt about the server."""

    @property
    def auth_failed(self) -> bool: ...

    @property
    def redirect(self) -> str | None: ...

    @property
    def last_contact_ok(self) -> bool | None: ...

    @property
    def outage(self) -> OutageView: ...


class DaemonView(Protocol):
    """The running daemon, as ``/healthz``, ``/metrics`` and the health look see it."""

    @property
    def once(self) -> bool: ...

    @property
    def paused(self) -> bool: ...

    @property
    def watcher_alive(self) -> bool | None:
        """Whether folder events are being watched; None when they are off on purpose."""
        ...

    @property
    def server(self) -> ServerContact: ...

    @property
    def ledger(self) -> JobLedger: ...

    heartbeat: float
    """``time.monotonic()`` when the dispatch loop last went round."""

    def uploading(self) -> set[int]:
        """The jobs in a worker's hands now."""
        ...
