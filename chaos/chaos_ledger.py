"""What both parts of the campaign read from outside the daemon: its ledger, file hashes."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def ledger_state(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Every job row (newest last) and the number of pending deletions."""
    if not path.exists():
        return [], 0
    for _ in range(50):
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        except sqlite3.OperationalError:
            time.sleep(0.1)
            continue
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
            pending = int(conn.execute("SELECT COUNT(*) FROM deletions").fetchone()[0])
            return rows, pending
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [], 0
            time.sleep(0.1)
        finally:
            conn.close()
    raise RuntimeError(f"cannot read the ledger {path}")


def newest_jobs(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Path -> its newest job."""
    newest: dict[str, dict[str, Any]] = {}
    for row in rows:
        newest[row["path"]] = row
    return newest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()
