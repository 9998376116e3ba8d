"""The crash campaign's invariants, checked once the last run is over.

Every file exactly once on the server, byte for byte, its job done and its source
moved; no partial or orphan record; no moment with two records for one file; no
internal error in the log; every failpoint killed at as often as planned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos.harness import ledger_state, logged_errors, newest_jobs, sha256_file, whole
from chaos.kills import Campaign
from chaos.plan import FileSpec
from ingestd.failpoints import FAILPOINTS

LOG_ERRORS = ("job.internal_error", "daemon.task_failed", "job.failed")


def verify(campaign: Campaign) -> None:
    report = campaign.report
    specs = campaign.specs
    snapshot = campaign.server.snapshot()
    rows, pending = ledger_state(campaign.ledger)
    records = snapshot["records"]
    report.records = len(records)
    report.deleted_records = len(snapshot["deleted"])
    report.faults = dict(snapshot["faults_injected"])
    report.upload_bytes = int(snapshot["upload_bytes_received"])
    report.files = len(specs)
    report.file_bytes = sum(s.size for s in specs)
    report.smallest = min(s.size for s in specs)
    report.largest = max(s.size for s in specs)
    report.slow_files = sum(s.slow for s in specs)
    report.changed_files = sum(s.changes > 0 for s in specs)
    report.chunk_sizes = sorted(campaign.chunk_sizes_used)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_name.setdefault(record["name"], []).append(record)
    newest = newest_jobs(rows)
    for spec in specs:
        row = newest.get(str(campaign.export / spec.relpath))
        check_file(campaign, spec, by_name.get(spec.stem, []), row)
    orphans = partial_or_orphan(records, rows)
    report.partial_or_orphan = len(orphans)
    report.problems += orphans
    if pending:
        report.problems.append(f"{pending} partial record(s) still queued for deletion")
    overlaps = campaign.events.overlaps()
    report.two_at_once = len(overlaps)
    for name, most in sorted(overlaps.items()):
        report.problems.append(
            f"{name}: {most} records at one moment (a partial one not deleted before "
            "the next was made)"
        )
    for state in ("failed", "skipped"):
        count = sum(r["state"] == state for r in newest.values())
        if count:
            report.problems.append(f"{count} job(s) {state}")
    check_log(campaign)
    check_coverage(campaign)


def check_file(
    campaign: Campaign, spec: FileSpec, mine: list[dict[str, Any]], row: dict[str, Any] | None
) -> None:
    """One file: one record holding its bytes, its job done, its source moved."""
    report = campaign.report
    report.records_per_file[spec.relpath] = len(mine)
    if len(mine) != 1:
        report.problems.append(f"{spec.relpath}: {len(mine)} records on the server")
    if row is None or row["state"] != "done":
        report.not_done += 1
        state = row["state"] if row else "no job"
        detail = f" ({row['fail_reason']}: {row['fail_detail']})" if row else ""
        report.problems.append(f"{spec.relpath}: not done but {state}{detail}")
        return
    server_sha = [(r["videos"] or [{}])[0].get("sha256") for r in mine]
    if not mine or row["sha256"] != spec.sha256 or any(s != spec.sha256 for s in server_sha):
        report.bytes_differ += 1
        report.problems.append(
            f"{spec.relpath}: source sha256 {spec.sha256[:12]}, ledger "
            f"{str(row['sha256'])[:12]}, server {[str(s)[:12] for s in server_sha]}"
        )
    if mine and row["record_id"] != mine[0]["id"]:
        report.problems.append(f"{spec.relpath}: the ledger names another record")
    report.moved_ok += check_moved(campaign, spec, row)


def partial_or_orphan(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """A problem for each record on the server that is partial or that no done job names."""
    done_ids = {r["record_id"] for r in rows if r["state"] == "done" and r["record_id"]}
    found = []
    for record in records:
        video = (record["videos"] or [{}])[0]
        if record["id"] not in done_ids or not whole(video):
            found.append(
                f"record {record['id']} ({record['name']!r}) is partial or an orphan: "
                f"{video.get('received')} of {video.get('total')} bytes"
            )
    return found


def check_moved(campaign: Campaign, spec: FileSpec, row: dict[str, Any]) -> bool:
    problem = moved_problem(campaign.export, campaign.moved, spec.relpath, spec.sha256, row)
    if problem:
        campaign.report.problems.append(problem)
    return problem is None


def moved_problem(
    export: Path, moved: Path, relpath: str, sha256: str, row: dict[str, Any]
) -> str | None:
    """What is wrong with a done file's move from ``export`` to ``moved``, if anything."""
    source = export / relpath
    final = Path(row["final_path"]) if row["final_path"] else None
    expected = moved / relpath
    if source.exists():
        return f"{relpath}: still in the watch folder after done"
    if final != expected or not expected.exists():
        return f"{relpath}: moved to {final}, not {expected}"
    if sha256_file(expected) != sha256:
        return f"{relpath}: the moved copy differs from the source"
    return None


def check_log(campaign: Campaign) -> None:
    bad = logged_errors(campaign.log.read_text(errors="replace"), LOG_ERRORS)
    campaign.report.internal_errors = sum(bad.values())
    if bad:
        campaign.report.problems.append(f"the daemon logged {dict(bad)} (see {campaign.log})")


def check_coverage(campaign: Campaign) -> None:
    report, wanted = campaign.report, campaign.options.kills_per_failpoint
    for name in FAILPOINTS:
        if report.kills[name] < wanted:
            report.problems.append(f"failpoint {name}: {report.kills[name]} kills, {wanted} wanted")
