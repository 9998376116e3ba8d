"""The shared-ledger campaign's checks, once every node has stopped.

Each recording (a file and its copies, which hold the same bytes) has exactly one
record on the server, holding those bytes; the other files of its group are
``skipped`` as duplicates and stay on the share; every job is done or skipped and
every uploaded file was moved; no record is partial or unaccounted for; the fake
server never had two chunk requests for one video inside at once from two nodes both
still connected (two nodes on one job; ``shared_server.py``);
no node logged an internal error or exited by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from chaos.checks import LOG_ERRORS, moved_problem, partial_or_orphan
from chaos.harness import logged_errors, newest_jobs
from chaos.shared_nodes import Node, read_ledger
from chaos.shared_plan import SharedFile, groups, ledger_path

if TYPE_CHECKING:
    from chaos.shared import SharedCampaign


def verify(campaign: SharedCampaign) -> None:
    report = campaign.report
    specs = campaign.specs
    snapshot = campaign.server.snapshot()
    state = read_ledger(campaign.url)
    if state is None:
        report.problems.append("the shared ledger cannot be read at the end")
        return
    rows, pending = state
    records: list[dict[str, Any]] = snapshot["records"]
    report.records = len(records)
    report.faults = dict(snapshot["faults_injected"])
    report.upload_bytes = int(snapshot["upload_bytes_received"])
    report.files = len(specs)
    report.copies = sum(spec.copy_of is not None for spec in specs)
    report.file_bytes = sum(spec.size for spec in specs)
    report.recording_bytes = sum(spec.size for spec in specs if spec.copy_of is None)
    report.smallest = min(spec.size for spec in specs)
    report.largest = max(spec.size for spec in specs)
    report.slow_files = sum(spec.slow for spec in specs)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_name.setdefault(record["name"], []).append(record)
    newest = newest_jobs(rows)
    for members in groups(specs).values():
        check_group(campaign, members, by_name, newest)
    orphans = partial_or_orphan(records, rows)
    report.orphans = len(orphans)
    report.problems += orphans
    if pending:
        report.problems.append(f"{pending} partial record(s) still queued for deletion")
    report.overlapping_chunks = int(snapshot["overlapping_chunks"])
    two_nodes, others = campaign.chunks.overlaps()
    report.two_senders, report.other_overlaps = len(two_nodes), others
    report.problems += [f"two nodes at once: {pair}" for pair in two_nodes]
    overlaps = campaign.events.overlaps()
    report.two_records_at_once = len(overlaps)
    for name, most in sorted(overlaps.items()):
        report.problems.append(f"{name}: {most} records at one moment")
    failed = sum(row["state"] == "failed" for row in newest.values())
    if failed:
        report.problems.append(f"{failed} job(s) failed")
    check_logs(campaign, campaign.nodes.values())
    count_takeovers(campaign, campaign.nodes.values(), rows)


def check_group(
    campaign: SharedCampaign,
    members: list[SharedFile],
    by_name: dict[str, list[dict[str, Any]]],
    newest: dict[str, dict[str, Any]],
) -> None:
    """One recording: one record among its files' names, the rest skipped as copies."""
    report = campaign.report
    held = [record for spec in members for record in by_name.get(spec.stem, [])]
    label = members[0].relpath + (f" (+{len(members) - 1} copies)" if len(members) > 1 else "")
    report.records_per_file[label] = len(held)
    if len(held) != 1:
        names = [record["name"] for record in held]
        report.problems.append(f"{label}: {len(held)} records on the server {names}")
    for spec in members:
        row = newest.get(ledger_path(spec))
        mine = by_name.get(spec.stem, [])
        if row is not None and row["state"] == "skipped" and len(members) > 1:
            report.skipped_copies += 1
            if mine:
                report.problems.append(f"{spec.relpath}: skipped, yet it has a record")
            if not (campaign.share / spec.relpath).exists():
                report.problems.append(f"{spec.relpath}: skipped, yet gone from the share")
            continue
        if row is None or row["state"] != "done":
            report.not_done += 1
            state = row["state"] if row else "no job"
            detail = f" ({row['fail_reason']}: {row['fail_detail']})" if row else ""
            report.problems.append(f"{spec.relpath}: not done but {state}{detail}")
            continue
        server_sha = [(record["videos"] or [{}])[0].get("sha256") for record in mine]
        if not mine or row["sha256"] != spec.sha256 or any(s != spec.sha256 for s in server_sha):
            report.bytes_differ += 1
            report.problems.append(
                f"{spec.relpath}: source sha256 {spec.sha256[:12]}, ledger "
                f"{str(row['sha256'])[:12]}, server {[str(s)[:12] for s in server_sha]}"
            )
        problem = moved_problem(campaign.share, campaign.moved, spec.relpath, spec.sha256, row)
        if problem:
            report.problems.append(problem)
        else:
            report.moved_ok += 1
    states = [(newest.get(ledger_path(spec)) or {}).get("state") for spec in members]
    if "skipped" in states and "done" not in states:
        report.problems.append(f"{label}: skipped as a copy, yet no file of its bytes is done")


def check_logs(campaign: SharedCampaign, nodes: Iterable[Node]) -> None:
    report = campaign.report
    for node in nodes:
        text = node.log.read_text(errors="replace")
        bad = logged_errors(text, LOG_ERRORS)
        report.internal_errors += sum(bad.values())
        if bad:
            report.problems.append(f"node {node.name} logged {dict(bad)} (see {node.log})")
        report.claims_lost += sum(e.get("event") == "ledger.claim_lost" for e in node.events())


def count_takeovers(
    campaign: SharedCampaign, nodes: Iterable[Node], rows: list[dict[str, Any]]
) -> None:
    """Jobs whose record one node made and another finished (its ``job.done``, else the
    ledger's ``last_node``); of those, the ones whose upload another node completed."""
    made: dict[str, str] = {}
    sent: dict[str, str] = {}
    finished: dict[str, str] = {}
    for node in nodes:
        for event in node.events():
            record_id = str(event.get("record_id") or "")
            name = event.get("event")
            if not record_id:
                continue
            if name in ("record.created", "record.reconciled"):
                made.setdefault(record_id, node.name)
            elif name == "upload.completed":
                sent[record_id] = node.name
            elif name == "job.done":
                finished[record_id] = node.name
    report = campaign.report
    for row in rows:
        record_id = str(row["record_id"] or "")
        if row["state"] != "done" or record_id not in made:
            continue
        by = finished.get(record_id) or str(row["last_node"])
        if by != made[record_id]:
            report.taken_over += 1
            report.taken_over_jobs.append(f"{row['path']}: {made[record_id]} -> {by}")
        report.uploads_taken_over += sent.get(record_id, made[record_id]) != made[record_id]
