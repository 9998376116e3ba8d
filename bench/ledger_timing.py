"""``python -m bench.ledger_timing run -c CONFIG``: ``ingestd run`` with timers on the ledger.

Every call aiosqlite hands to its connection thread (execute, fetch, commit, a batch
of writes) is timed inside that thread, so the total is the time the ledger's one
connection was busy: SQLite work plus fsyncs, without event-loop waits. At
exit every call's (end time, seconds, commits, statement) goes to the JSON file named by
``$BENCH_LEDGER_TIMING``; a batch of writes (``connection._run_batch``, one commit) is
named by its first statement and how many writes it held.
Nothing else about the daemon changes.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import aiosqlite.core

from ingestd.ledger import connection

# (wall-clock end, seconds busy, 1 if it committed, statement) of every call, for the bench
# to window (the statement's first words: None for fetches).
_calls: list[tuple[float, float, int, str | None]] = []
_lock = threading.Lock()
_WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT")


def _timed(function: Callable[[], Any], sql: str | None, conn: Any, batch: bool) -> Any:
    started = time.perf_counter()
    try:
        return function()
    finally:
        spent = time.perf_counter() - started
        # A batch of writes, a write outside a transaction, or a COMMIT: one durable
        # (fsynced) commit.
        committed = batch or (
            sql is not None
            and sql.lstrip().upper().startswith(_WRITES)
            and conn is not None
            and not conn.in_transaction
        )
        with _lock:
            _calls.append((time.time(), spent, 1 if committed else 0, sql and sql[:70]))


_original: Any = aiosqlite.core.Connection._execute


def _named(fn: Any, args: tuple[Any, ...]) -> tuple[str | None, bool]:
    """The statement a call runs (for a batch: its first, and how many writes), and whether
    it is a batch of writes."""
    if args and isinstance(args[0], str):
        return args[0], False
    if fn is connection._run_batch and len(args) > 1 and args[1]:
        writes = args[1]
        return f"{writes[0].sql[:56]} (batch of {len(writes)})", True
    if fn is connection._run and len(args) > 1:
        return str(args[1].sql), False
    return None, False


async def _execute(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    sql, batch = _named(fn, args)
    inner = functools.partial(fn, *args, **kwargs)
    return await _original(self, _timed, inner, sql, self._connection, batch)


def _dump() -> None:
    target = os.environ.get("BENCH_LEDGER_TIMING")
    if target:
        with open(target, "w", encoding="utf-8") as handle:
            json.dump(_calls, handle)


def main() -> None:
    aiosqlite.core.Connection._execute = _execute  # type: ignore[method-assign]
    atexit.register(_dump)
    from ingestd.commands.main import main as ingestd_main

    ingestd_main()


if __name__ == "__main__":
    main()
