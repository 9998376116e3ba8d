"""The power-cut campaign's invariants, checked on what the disk kept after every cut.

Every ledger and backup whole, no more backups than ``ledger.backups`` (one more
between a backup and its rotation); every recording that finished arriving complete
in one place; nothing half written under a final name; no job done whose server copy
is incomplete; what the ledger says an after-upload action did is on the disk; no
name with two records at one moment. At the end: one complete record each, every
job settled, nothing partial left.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from chaos.harness import ledger_state, newest_jobs
from powercut.plan import BACKUPS, TEMPORARY, Recording, Station, sha256_of
from powercut.rig import Rig


def check(rig: Rig, *, final: bool) -> None:
    snapshot = rig.server.snapshot()
    records = snapshot["records"]
    by_id = {r["id"]: r for r in records}
    for station in rig.stations.values():
        rows = check_ledger(rig, station)
        check_backups(rig, station)
        complete = check_files(rig, station)
        newest = newest_jobs(rows)
        if not final and rows:
            for row in newest.values():
                state = row["state"]
                if state == "done" and not row["after_done"]:
                    state = "done, action pending"
                rig.report.cuts_per_state[state] = rig.report.cuts_per_state.get(state, 0) + 1
        for row in rows:
            if row["state"] == "done":
                check_done(rig, station, row, by_id.get(row["record_id"]))
            if row["state"] in ("done", "failed"):
                check_action(rig, station, row)
        for rec in rig.recordings:
            if rec.action == station.action and rec.finished:
                check_recording(rig, station, rec, complete, records)
    overlaps = rig.events.overlaps()
    if overlaps:
        rig.report.duplicates = len(overlaps)
        for name, most in sorted(overlaps.items()):
            rig.report.problem(f"{name}: {most} records at one moment")


def check_ledger(rig: Rig, station: Station) -> list[dict[str, Any]]:
    """The ledger opens and passes quick_check (what the daemon's next open would do)."""
    path = station.ledger
    if not path.exists():
        if rig.backups(station):
            rig.report.flag(
                "ledger_damage",
                f"ledger-gone:{station.action}",
                f"{station.action}: cut {rig.cut_number}: the ledger is gone, its backups "
                "are not (the daemon refuses to start)",
            )
        return []
    try:
        conn = sqlite3.connect(path, timeout=10)
        try:
            verdict = [r[0] for r in conn.execute("PRAGMA quick_check")]
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return []
        verdict, rows = [str(exc)], []
    if verdict != ["ok"]:
        rig.report.flag(
            "ledger_damage",
            f"ledger:{station.action}:{verdict[:1]}",
            f"{station.action}: cut {rig.cut_number}: the ledger fails: {verdict[:2]}",
        )
    return rows


def check_backups(rig: Rig, station: Station) -> None:
    backups = rig.backups(station)
    if len(backups) > BACKUPS + 1:  # one more: a cut between a backup and its rotation
        rig.report.flag(
            "rotations_undone",
            f"rotation:{station.action}",
            f"{station.action}: cut {rig.cut_number}: {len(backups)} backups on disk, "
            f"ledger.backups is {BACKUPS} (the rotation's deletions were not durable)",
        )
    for backup in backups:
        try:
            conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
            try:
                verdict = [r[0] for r in conn.execute("PRAGMA quick_check")]
                conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            verdict = [str(exc)]
        if verdict != ["ok"]:
            rig.report.flag(
                "truncated_final",
                f"file:{backup}",
                f"{station.action}: cut {rig.cut_number}: backup {backup.name} under its "
                f"final name is not whole ({verdict[0]}; {backup.stat().st_size} bytes)",
            )


def check_files(rig: Rig, station: Station) -> dict[str, list[Path]]:
    """Complete recordings by sha256 -> where; half-written files under final names."""
    shas = {r.sha256 for r in rig.recordings if r.action == station.action}
    complete: dict[str, list[Path]] = {}
    for top in (station.export, station.moved, station.failed):
        for folder, _, names in os.walk(top):
            for name in names:
                path = Path(folder) / name
                if name.startswith(".") or name.endswith(TEMPORARY):
                    continue  # a temporary name: not a final one
                if name.endswith(".json"):
                    continue  # a sidecar, travelling with its video
                if name.endswith(".error.txt"):
                    text = path.read_text(errors="replace")
                    if "To try again" not in text or not text.endswith("\n"):
                        rig.report.flag(
                            "truncated_final",
                            f"file:{path}",
                            f"cut {rig.cut_number}: {path} is not whole ({len(text)} bytes)",
                        )
                    continue
                sha = sha256_of(path)
                if sha in shas:
                    complete.setdefault(sha, []).append(path)
                elif top != station.export:
                    rig.report.flag(
                        "truncated_final",
                        f"file:{path}",
                        f"cut {rig.cut_number}: {path} is no complete recording "
                        f"({path.stat().st_size} bytes)",
                    )
    return complete


def check_done(rig: Rig, station: Station, row: dict[str, Any], record: Any) -> None:
    video = (record["videos"] or [{}])[0] if record else {}
    whole = video.get("total") is not None and video.get("received") == video.get("total")
    if not whole or video.get("sha256") != row["sha256"]:
        rig.report.flag(
            "done_incomplete",
            f"done:{station.action}:{row['id']}",
            f"{station.action}: cut {rig.cut_number}: job {row['id']} ({row['path']}) is "
            f"done but the server holds {video.get('received')} of {video.get('total')} bytes",
        )


def check_action(rig: Rig, station: Station, row: dict[str, Any]) -> None:
    """What the ledger says the after-upload action did is what the disk shows."""
    source, final = Path(row["path"]), row["final_path"]
    wrong = ""
    if row["state"] == "failed" and final:
        if sha256_of(Path(final)) is None:
            wrong = f"set aside to {final} by the ledger, not there on disk"
        elif source.exists():
            wrong = f"set aside to {final}, yet the source is back in the watch folder"
    elif not row["after_done"]:
        return
    elif station.action == "move" and final:
        if sha256_of(Path(final)) != row["sha256"]:
            wrong = f"moved to {final} by the ledger, not there on disk"
        elif source.exists():
            wrong = f"moved to {final}, yet the source is back in the watch folder"
    elif (station.action == "delete" or row["cleaned_at"]) and source.exists():
        what = "deleted" if station.action == "delete" else "expired (keep_for)"
        wrong = f"{what} by the ledger, back in the watch folder"
    if wrong:
        text = f"{station.action}: cut {rig.cut_number}: {source.name}: {wrong}"
        rig.report.flag("actions_undone", f"action:{row['id']}:{station.action}", text)


def check_recording(
    rig: Rig,
    station: Station,
    rec: Recording,
    complete: dict[str, list[Path]],
    records: list[dict[str, Any]],
) -> None:
    if complete.get(rec.sha256):
        return
    for record in records:
        video = (record["videos"] or [{}])[0]
        ready = video.get("status") == "ready" and video.get("sha256") == rec.sha256
        if record["name"] == rec.stem and ready:
            return
    key = f"{rec.action}/{rec.relpath}"
    rig.report.flag(
        "recordings_lost",
        f"lost:{key}",
        f"cut {rig.cut_number}: {key} ({rec.size} bytes) finished arriving, and now is "
        "in no complete copy: not in the watch folder, not in move_to, not ready on the server",
    )


def check_end(rig: Rig) -> None:
    """After the last cut: one complete record each, every job done, its action taken."""
    snapshot = rig.server.snapshot()
    rig.report.faults = dict(snapshot["faults_injected"])
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in snapshot["records"]:
        by_name.setdefault(record["name"], []).append(record)
        video = (record["videos"] or [{}])[0]
        if video.get("received") != video.get("total") or video.get("status") != "ready":
            rig.report.partial_records_left += 1
            rig.report.problem(f"record {record['id']} ({record['name']}) is left partial")
    for rec in rig.recordings:
        mine = by_name.get(rec.stem, [])
        if len(mine) > 1:
            rig.report.duplicates += 1
            rig.report.problem(f"{rec.action}/{rec.relpath}: {len(mine)} records")
    for station in rig.stations.values():
        rows, pending = ledger_state(station.ledger)
        if pending:
            rig.report.problem(f"{station.action}: {pending} partial record(s) not deleted")
        newest = newest_jobs(rows)
        for rec in rig.recordings:
            if rec.action != station.action:
                continue
            row = newest.get(str(station.export / rec.relpath))
            if not settled(rec, row):
                state = row["state"] if row else "no job"
                rig.report.problem(f"{station.action}/{rec.relpath}: not finished: {state}")
            elif row is not None and row["state"] == "skipped":
                rig.report.problem(
                    f"{station.action}/{rec.relpath}: came back after its action and was "
                    "skipped as a duplicate of its own upload"
                )
            elif rec.broken_sidecar and not row["final_path"]:  # type: ignore[index]
                rig.report.flag(
                    "failed_not_set_aside",
                    f"aside:{rec.relpath}",
                    f"{station.action}/{rec.relpath}: failed, never moved to failed_to",
                )


def all_done(rig: Rig) -> bool:
    for station in rig.stations.values():
        rows, pending = ledger_state(station.ledger)
        newest = newest_jobs(rows)
        for rec in rig.recordings:
            if rec.action != station.action:
                continue
            if not settled(rec, newest.get(str(station.export / rec.relpath))):
                return False
        if pending:
            return False
    return True


def settled(rec: Recording, row: dict[str, Any] | None) -> bool:
    """Done with its action taken; or, with a broken sidecar, failed."""
    if row is None:
        return False
    if rec.broken_sidecar:
        return bool(row["state"] == "failed")
    # skipped: a file whose deletion a cut undid came back and matched its own upload
    return bool(row["state"] == "skipped" or (row["state"] == "done" and row["after_done"]))
