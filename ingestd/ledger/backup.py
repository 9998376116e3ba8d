"""Backups of the ledger, its integrity check, and the restore.

Why online backups with SQLite's backup API: the copy is one consistent
snapshot (one read transaction) even while the daemon commits, which a file
copy of a WAL database is not. Each backup is written to a temporary name,
checked (``quick_check``), fsynced and only then renamed into place, so a
crash never leaves a half backup under a backup's name. Names are
``LEDGER.backup-YYYYMMDD-HHMMSS`` (UTC, so they sort by time whatever the
time zone does), beside the ledger; the newest ``ledger.backups`` are kept.

The restore (``ingestd ledger restore``) takes the ledger's lock (no daemon
may run), picks the newest backup that passes ``integrity_check``, keeps
the current file aside as ``LEDGER.damaged-YYYYMMDD-HHMMSS`` (with its
``-wal``, which may hold the last commits: never deleted), puts a copy of
the backup in place and marks it ``restored_at`` (and moved, when the
ledger it replaces was: ``moved.py``). Files that finished after
the backup are then checked against the server before anything is uploaded
again: see ``upload/after_restore.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ingestd.disk.private import create_private, fsync_folder, fsync_path
from ingestd.errors import LedgerDamaged, LedgerError
from ingestd.ledger.connection import sqlite_uri
from ingestd.ledger.lock import LedgerLock
from ingestd.ledger.model import State
from ingestd.ledger.moved import MARKER_KEYS

BACKUP_EVERY = 24 * 3600.0
# Backups beside the ledger are named LEDGER + this + YYYYMMDD-HHMMSS.
BACKUP_INFIX = ".backup-"
# Meta keys. ``backup_taken_at`` is written into each backup; the others into a
# restored ledger (upload/after_restore.py reads them).
BACKUP_TAKEN_AT = "backup_taken_at"
RESTORED_AT = "restored_at"
RESTORED_FROM = "restored_from"
RESTORED_BACKUP_TIME = "restored_backup_time"
_STAMP = "%Y%m%d-%H%M%S"
_STALE_TMP = 3600.0  # a temporary backup file older than this was left by a crash
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _stamp(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime(_STAMP)


def existing_backups(path: Path) -> list[Path]:
    """Backups of the ledger at ``path`` (``LEDGER.backup-YYYYMMDD-HHMMSS``), oldest first."""
    prefix = path.name + BACKUP_INFIX
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    stamps = [n for n in names if n.startswith(prefix) and _is_stamp(n[len(prefix) :])]
    return [path.with_name(n) for n in sorted(stamps)]


def _is_stamp(text: str) -> bool:
    """``YYYYMMDD-HHMMSS``."""
    return len(text) == 15 and text[8] == "-" and (text[:8] + text[9:]).isdigit()


def refuse_lost_ledger(path: Path) -> None:
    """A missing or empty ledger is a first start - unless backups of an earlier one exist.

    Starting afresh beside them would upload every file again: the earlier
    ledger was lost (deleted, truncated by a file system repair) and should
    be restored instead.
    """
    try:
        fresh = path.stat().st_size == 0
    except FileNotFoundError:
        fresh = True
    if not fresh:
        return
    backups = existing_backups(path)
    if backups:
        raise LedgerDamaged(
            path,
            f"but {len(backups)} backup(s) of an earlier ledger lie beside it, the newest "
            f"{backups[-1].name}; to start afresh on purpose, move them away",
            what="is empty" if path.exists() else "is missing",
        )


def backup_stamp(when: float) -> str:
    """``2026-05-09 10:00:00``: a time for people (UTC, like the backups' names)."""
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def backup_time(path: Path) -> float | None:
    """When a backup was taken, from its name (None if it is not a backup's name)."""
    _, _, stamp = path.name.rpartition(BACKUP_INFIX)
    try:
        return dt.datetime.strptime(stamp, _STAMP).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def next_backup_due(ledger: Path) -> float:
    """When the daemon should make its next backup: a day after the newest, or now."""
    backups = existing_backups(ledger)
    newest = backup_time(backups[-1]) if backups else None
    now = time.time()
    if newest is None or newest > now:  # none yet, or the clock went back
        return now
    return newest + BACKUP_EVERY


@contextlib.contextmanager
def _connect(path: Path, *, readonly: bool) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection (these run in a thread or a short CLI command)."""
    conn = sqlite3.connect(
        sqlite_uri(path.resolve(), readonly=readonly), uri=True, isolation_level=None
    )
    try:
        yield conn
    finally:
        conn.close()


def _copy(source: Path, target: Path, meta: dict[str, str]) -> list[str]:
    """A consistent copy of ``source`` at ``target`` (one file, no WAL) with ``meta`` added.

    Returns the copy's ``quick_check`` problems (empty: it is sound). The copy
    is fsynced; renaming it into place is the caller's.
    """
    target.unlink(missing_ok=True)
    create_private(target)  # 0600 like the ledger, whatever the umask
    with _connect(source, readonly=True) as src, _connect(target, readonly=False) as dst:
        src.backup(dst)  # all pages in one step: one read transaction, one snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # self-contained: no -wal beside it
        for key, value in meta.items():
            dst.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )
        problems = [str(row[0]) for row in dst.execute("PRAGMA quick_check")]
    fsync_path(target)
    return [] if problems == ["ok"] else problems


def make_backup(ledger: Path, keep: int) -> Path:
    """Back the ledger up now (safe while the daemon writes); keep the newest ``keep``."""
    if keep < 1:
        raise LedgerError("ledger.backups is 0: backups are off (set it to how many to keep)")
    if not ledger.exists():
        raise LedgerError(f"no ledger at {ledger} to back up")
    taken = time.time()
    target = ledger.with_name(ledger.name + BACKUP_INFIX + _stamp(taken))
    while target.exists():  # two backups within one second: the second waits for the next
        time.sleep(0.1)
        taken = time.time()
        target = ledger.with_name(ledger.name + BACKUP_INFIX + _stamp(taken))
    temporary = target.with_name(target.name + ".tmp")
    try:
        problems = _copy(ledger, temporary, {BACKUP_TAKEN_AT: repr(taken)})
        if problems:
            raise LedgerError(
                f"the backup of {ledger} fails quick_check ({problems[0]}): the ledger itself "
                "may be damaged; run `ingestd ledger check`"
            )
        os.rename(temporary, target)
        fsync_path(target.parent)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot back up {ledger}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    rotate(ledger, keep)
    return target


def rotate(ledger: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups (and temporary files a crash left)."""
    backups = existing_backups(ledger)
    removed = backups[: max(0, len(backups) - keep)]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:  # else a power cut brings them back, and backups pile up past ``keep``
        fsync_folder(ledger.parent)
    prefix = ledger.name + BACKUP_INFIX
    with contextlib.suppress(OSError):
        for name in os.listdir(ledger.parent):
            stale = ledger.with_name(name)
            if name.startswith(prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if time.time() - stale.stat().st_mtime > _STALE_TMP:
                        stale.unlink()
    return removed


# --- check ---------------------------------------------------------------------------


# Result codes that say "cannot get at the file", not "the file is damaged".
_ACCESS_CODES = frozenset({3, 5, 8, 14})  # PERM, BUSY, READONLY, CANTOPEN


def integrity_problems(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of a ledger or backup, read-only; empty when sound.

    Raises LedgerError when the file cannot be read at all (permissions, a
    read-only folder without the WAL index): that is no verdict on its content.
    """
    try:
        with _connect(path, readonly=True) as conn:
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _ACCESS_CODES:
            raise LedgerError(f"cannot read {path}: {exc}") from None
        return [str(exc)]
    return [] if problems == ["ok"] else problems


def _read(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Jobs per state and the meta values of a sound ledger."""
    with _connect(path, readonly=True) as conn:
        found = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    return {s.value: int(found.get(s.value, 0)) for s in State}, {
        str(k): str(v) for k, v in meta.items()
    }


@dataclass
class CheckReport:
    """What ``ingestd ledger check`` found."""

    ledger: Path
    exists: bool
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    backups: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The report as a person reads it."""
        out = []
        if not self.exists:
            out.append(f"no ledger at {self.ledger}")
        elif self.ok:
            size = self.ledger.stat().st_size
            out.append(
                f"ledger {self.ledger}: integrity_check ok (schema "
                f"{self.meta.get('schema_version', '?')}, {size} bytes)"
            )
            out.append("jobs: " + ", ".join(f"{state} {n}" for state, n in self.counts.items()))
        else:
            out.append(f"ledger {self.ledger}: DAMAGED (integrity_check found problems)")
            out.extend(f"  {problem}" for problem in self.problems[:10])
            if len(self.problems) > 10:
                out.append(f"  ... and {len(self.problems) - 10} more")
        if self.backups:
            newest = self.backups[-1]
            taken = backup_time(newest)
            age = "" if taken is None else f", {(time.time() - taken) / 3600:.1f} h old"
            out.append(f"backups: {len(self.backups)}, the newest {newest.name}{age}")
        else:
            out.append("backups: none")
        if RESTORED_AT in self.meta:
            when = backup_stamp(float(self.meta[RESTORED_AT]))
            out.append(
                f"restored from {self.meta.get(RESTORED_FROM, '?')} at {when} UTC: files not "
                "done in it are checked against the server before they are uploaded"
            )
        return out


def check_ledger(ledger: Path) -> CheckReport:
    """Full integrity check and counts; a missing ledger is fine unless backups exist."""
    report = CheckReport(ledger, ledger.exists(), backups=existing_backups(ledger))
    if not report.exists or ledger.stat().st_size == 0:
        report.exists = False
        if report.backups:
            report.problems = ["the ledger is missing or empty, but backups of it exist"]
        return report
    report.problems = integrity_problems(ledger)
    if report.ok:
        try:
            report.counts, report.meta = _read(ledger)
        except sqlite3.Error as exc:
            report.problems = [f"not an ingestd ledger: {exc}"]
    return report


# --- restore -------------------------------------------------------------------------


@dataclass
class RestoreReport:
    """What ``ingestd ledger restore`` did."""

    restored_from: Path
    backup_taken_at: float
    kept_aside: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def restore(ledger: Path, *, force: bool = False) -> RestoreReport:
    """Put the newest good backup in place; the current file is kept aside, never deleted."""
    with LedgerLock(ledger, purpose="; stop it before restoring"):
        present = ledger.exists() and ledger.stat().st_size > 0
        if present and not force and not integrity_problems(ledger):
            raise LedgerError(
                f"the ledger {ledger} passes integrity_check: nothing to restore "
                "(--force puts the newest good backup in place anyway, keeping this one aside)"
            )
        chosen, skipped = _newest_good_backup(ledger)
        taken = _taken_at(chosen)
        now = time.time()
        aside: Path | None = None
        temporary = ledger.with_name(ledger.name + ".restoring")
        meta = {
            RESTORED_AT: repr(now),
            RESTORED_FROM: chosen.name,
            RESTORED_BACKUP_TIME: repr(taken),
        }
        if present:  # a backup from before `ledger copy` must not bring a moved ledger back
            meta.update(_moved_marker(ledger))
        try:
            problems = _copy(chosen, temporary, meta)
            if problems:
                raise LedgerError(f"the copy of {chosen} fails quick_check: {problems[0]}")
            aside = _keep_aside(ledger, now) if ledger.exists() else None
            os.rename(temporary, ledger)
            fsync_path(ledger.parent)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot restore {chosen}: {exc}") from None
        finally:
            temporary.unlink(missing_ok=True)
    return RestoreReport(chosen, taken, aside, skipped)


def _moved_marker(ledger: Path) -> dict[str, str]:
    """The moved marker (moved.py) of the ledger a restore replaces, if it can be read."""
    with contextlib.suppress(sqlite3.Error):
        with _connect(ledger, readonly=True) as conn:
            marks = ",".join("?" * len(MARKER_KEYS))
            rows = conn.execute(
                f"SELECT key, value FROM meta WHERE key IN ({marks})", MARKER_KEYS
            ).fetchall()
        return {str(key): str(value) for key, value in rows}
    return {}


def _newest_good_backup(ledger: Path) -> tuple[Path, list[tuple[Path, str]]]:
    skipped: list[tuple[Path, str]] = []
    for candidate in reversed(existing_backups(ledger)):
        try:
            problems = integrity_problems(candidate)
        except LedgerError as exc:
            problems = [str(exc)]
        if not problems:
            return candidate, skipped
        skipped.append((candidate, problems[0]))
    if not skipped:
        raise LedgerError(f"no backup of {ledger} to restore (none beside it)")
    raise LedgerError(
        f"no good backup of {ledger}: all {len(skipped)} fail integrity_check "
        f"(the newest: {skipped[0][1]})"
    )


def _taken_at(backup: Path) -> float:
    """When the backup's snapshot was taken: its own record, else its name."""
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        with _connect(backup, readonly=True) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (BACKUP_TAKEN_AT,)).fetchone()
        if row is not None:
            return float(row[0])
    taken = backup_time(backup)
    if taken is None:  # cannot happen for a name existing_backups() accepted
        raise LedgerError(f"cannot tell when {backup} was taken")
    return taken


def _keep_aside(ledger: Path, now: float) -> Path:
    """Rename the ledger (and its -wal/-shm) to ``LEDGER.damaged-STAMP``; returns the new name.

    The -wal goes with it under the matching name, so ``sqlite3 LEDGER.damaged-STAMP``
    still sees its last commits - and so it is never replayed into the restored file.
    """
    aside = ledger.with_name(f"{ledger.name}.damaged-{_stamp(now)}")
    while aside.exists():
        now += 1
        aside = ledger.with_name(f"{ledger.name}.damaged-{_stamp(now)}")
    os.rename(ledger, aside)
    for suffix in _SIDE_FILES:
        side = ledger.with_name(ledger.name + suffix)
        if side.exists():
            os.rename(side, aside.with_name(aside.name + suffix))
    return aside
