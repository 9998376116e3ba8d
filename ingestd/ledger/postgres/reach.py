"""Does the shared ledger answer? One connection, and libpq's own reason when it does not.

A pool that cannot connect only times out ("within 6 s") and logs each attempt;
the commands an administrator runs while setting up (``check``, ``ledger copy``)
say why instead, in one line: the database does not exist, the password was
refused, nothing listens. The reason is libpq's, without its
``connection to server at ... failed:`` preamble, which can name a socket path
from the URL's query string.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from ingestd.errors import LedgerError
from ingestd.ledger.postgres.store import CONNECT_TIMEOUT

_PREAMBLE = "connection to server"


def reason_of(exc: psycopg.Error) -> str:
    """libpq's message, one line, without the preamble that names where it connected."""
    text = str(exc)
    if _PREAMBLE in text:  # several hosts: one "connection to server ... failed: why" each
        last = text[text.rindex(_PREAMBLE) :]
        text = last.split("failed:", 1)[1] if "failed:" in last else last
    text = re.sub(r"^(FATAL|ERROR):\s+", "", text.strip())
    return " ".join(text.split()) or type(exc).__name__


class Unreachable(LedgerError):
    """The shared ledger cannot be connected to; ``reason`` says why (libpq's words)."""

    def __init__(self, where: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot connect to the shared ledger {where}: {reason}")


async def reach(url: str, password: str | None, where: str) -> None:
    """Connect once and close; :class:`Unreachable` when that fails."""
    kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if password is not None:
        kwargs["password"] = password
    try:
        conn = await psycopg.AsyncConnection.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise Unreachable(where, reason_of(exc)) from None
    await conn.close()
