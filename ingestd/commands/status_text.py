"""``ingestd status`` as a few readable lines: what ``status.gather_status`` found (on a
shared ledger, a few lines per node in place of the daemon's)."""

from __future__ import annotations

import time
from typing import Any

from ingestd.ledger.moved import describe_move
from ingestd.units import format_duration, format_size


def _clock(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def render_status(status: dict[str, Any]) -> str:
    """The status as a few readable lines."""
    counts = status["counts"]
    nodes = status.get("nodes")
    lines = [
        *_moved_lines(status),
        *(_daemon_lines(status["daemon"]) if nodes is None else _nodes_lines(nodes)),
        f"ledger: {status['ledger']}"
        + ("  (PAUSED: `ingestd resume` to go on)" if status["paused"] else ""),
        "jobs:   " + "  ".join(f"{state} {counts[state]}" for state in counts),
    ]
    for group in ("active", "failed", "waiting"):
        items = status[group]
        if not items:
            continue
        lines.append(f"{group}:")
        lines.extend(line for item in items for line in _job_lines(item))
        more = status["more"][group]
        if more:
            lines.append(f"  and {more} more (`ingestd status --all` lists them all)")
    problem = status["server_problem"]
    if problem:
        lines.append(
            f"SERVER: {problem['problem']} (since {_clock(problem['since'])}); "
            "no upload goes on until then"
        )
    lines.extend(_folder_lines(status["folders"]))
    oldest = status["oldest_waiting"]
    if oldest:
        lines.append(f"oldest waiting: {oldest['path']} ({format_duration(oldest['age_s'])})")
    if status["pending_deletions"]:
        lines.append(
            f"partial records waiting to be deleted on the server: {status['pending_deletions']}"
        )
    lines.extend(_orphan_lines(status))
    return "\n".join(lines)


def _moved_lines(status: dict[str, Any]) -> list[str]:
    """A ledger ``ingestd ledger copy`` moved: no daemon runs on it again."""
    moved = status["moved"]
    if moved is None:
        return []
    if not moved["finished"]:
        return [
            f"MOVING: an `ingestd ledger copy` into the shared ledger {moved['to']} did not "
            "finish: run it again with the same --to (no daemon starts on this ledger until then)"
        ]
    return [
        f"MOVED: this ledger was moved to the shared ledger {moved['to']} "
        f"({describe_move(moved['at'])}); it is kept as it was then: set ledger.url to "
        "it and remove ledger.path"
    ]


def _daemon_lines(daemon: dict[str, Any]) -> list[str]:
    """Whether a daemon runs; while one does (or hangs), its health at its last beat."""
    pid = daemon["pid"]
    if daemon["heartbeat_at"] is None:
        return ["daemon: not running (it has written no heartbeat to this ledger)"]
    age = format_duration(daemon["heartbeat_age_s"])
    if daemon["state"] == "not running":
        if daemon["stopped_at"]:
            why = f"stopped at {_clock(daemon['stopped_at'])}"
        else:
            why = f"last heartbeat {age} ago, at {_clock(daemon['heartbeat_at'])}"
        return [f"daemon: not running ({why})"]
    if daemon["running"]:
        head = (
            f"daemon: running, pid {pid}, up {format_duration(daemon['uptime_s'])} "
            f"(since {_clock(daemon['started_at'])}; heartbeat {age} ago)"
        )
    else:
        head = (
            f"daemon: NOT RESPONDING: pid {pid} holds the ledger, but its last heartbeat "
            f"is {age} old (is it hung? `systemctl status ingestd`)"
        )
    lines = [head]
    problems = daemon["problems"]
    lines.append("health: ok" if not problems else "health: PROBLEMS")
    lines.extend(f"  - {problem}" for problem in problems)
    server = daemon["server"]
    detail = f" ({server['detail']})" if server["detail"] else ""
    lines.append(f"server: {server['state']}{detail}")
    return lines  # each folder's state: the ledger's own record (_folder_lines)


def _nodes_lines(nodes: list[dict[str, Any]]) -> list[str]:
    """Each node of a shared ledger: who and where, its heartbeat, health and claims."""
    if not nodes:
        return ["nodes:  none (no daemon has run on this shared ledger)"]
    lines = ["nodes:"]
    for node in nodes:
        lines.extend(_node_lines(node))
    return lines


def _node_lines(node: dict[str, Any]) -> list[str]:
    name, state = node["name"], node["state"]
    shown = "GONE" if state == "gone" else state
    paused = f"  (PAUSED: `ingestd resume --node {name}` to go on)" if node["paused"] else ""
    lines = [f"  {name:<16} {shown:<8} {node['host']}, pid {node['pid']}{paused}"]
    age, beat = format_duration(node["heartbeat_age_s"]), _clock(node["heartbeat_at"])
    if state == "stopped":
        lines.append(f"      stopped at {_clock(node['stopped_at'])}")
    elif state == "gone":
        lines.append(
            f"      health: gone: last heartbeat {age} ago ({beat}), more than twice "
            f"ledger.lease; `ingestd ledger forget-node {name}` drops it from this list"
        )
    else:
        lines.append(f"      heartbeat {age} ago ({beat}), since {_clock(node['started_at'])}")
        problems = node["problems"]
        lines.append("      health: ok" if not problems else "      health: PROBLEMS")
        lines.extend(f"        - {problem}" for problem in problems)
        server = node["server"]
        if server is not None:
            detail = f" ({server['detail']})" if server["detail"] else ""
            lines.append(f"      server: {server['state']}{detail}")
    active, more = node["active"], node["more_active"]
    if active:
        lines.append(f"      holds {len(active) + more} job(s):")
        lines.extend("    " + line for item in active for line in _job_lines(item))
        if more:
            lines.append(f"        and {more} more (`ingestd status --all` lists them all)")
    return lines


def _folder_lines(folders: list[dict[str, Any]]) -> list[str]:
    """Each watch folder's state and since when; a problem in capitals, as PAUSED is."""
    if not folders:
        return []
    lines = ["folders:"]
    for folder in folders:
        state = folder["state"]
        shown = state if state == "present" else state.upper()
        since = _clock(folder["since"])
        lines.append(f"  {folder['folder']:<16} {shown:<10} {folder['path']}  (since {since})")
    return lines


def _job_lines(item: dict[str, Any]) -> list[str]:
    """One line for the job, and one for its tries when it has had any."""
    head = f"  #{item['job']} {item['state']:<10} {format_size(item['size']):>10}  {item['path']}"
    if "percent" in item:
        head += f"  {item['percent']}%"
    if "rate_bps" in item:
        head += f" at {format_size(item['rate_bps'])}/s, {format_duration(item['eta_s'])} left"
    if "why" in item:
        head += f"  - {item['why']} (for {format_duration(item['waiting_s'])})"
    if "reason" in item:
        head += f"  - {item['reason']}: {item['detail']}"
    tries = []
    if item["attempts"]:
        tries.append(f"attempts {item['attempts']}")
    if "next_try_s" in item:
        tries.append(f"next try in {format_duration(item['next_try_s'])}")
    if "retry" in item:
        tries.append(f"again with `{item['retry']}`")
    if "last_error" in item:
        tries.append(f"last error: {item['last_error']}")
    return [head, "      " + ", ".join(tries)] if tries else [head]


def _orphan_lines(status: dict[str, Any]) -> list[str]:
    orphans = status["suspected_orphans"]
    if not orphans:
        return []
    lines = [
        "records left alone on the server (may be empty leftovers of ours; "
        "check each, delete it there if it is):"
    ]
    for orphan in orphans:
        lines.append(
            f"  {orphan['record_id']}  {orphan['name']!r} (job #{orphan['job_id']}): "
            f"{orphan['why']}"
        )
    if status["more_orphans"]:
        lines.append(f"  and {status['more_orphans']} more")
    return lines
