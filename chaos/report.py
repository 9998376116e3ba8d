"""The crash campaign's result: the figures, the invariants that failed, the table and JSON."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chaos.fs_plan import FsReport
from chaos.harness import markdown_table
from ingestd.failpoints import FAILPOINTS
from ingestd.units import format_size


@dataclass
class RunRecord:
    """One start of the daemon and how it ended."""

    number: int
    kind: str  # a failpoint name, "random" or "final"
    count: int | None
    chunk_size: int
    outcome: str  # "hit", "missed", "killed", "clean", or what went wrong
    seconds: float


@dataclass
class Report:
    """The campaign's result: the table's numbers and the invariants that failed."""

    seed: int
    options: dict[str, Any]
    started: str
    cores: int
    files: int = 0
    file_bytes: int = 0
    smallest: int = 0
    largest: int = 0
    slow_files: int = 0
    changed_files: int = 0
    chunk_sizes: list[int] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)
    random_kills: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    records: int = 0
    records_per_file: dict[str, int] = field(default_factory=dict)
    partial_or_orphan: int = 0
    two_at_once: int = 0
    deleted_records: int = 0
    bytes_differ: int = 0
    not_done: int = 0
    moved_ok: int = 0
    upload_bytes: int = 0
    internal_errors: int = 0
    seconds: float = 0.0
    runs: list[RunRecord] = field(default_factory=list)
    fs: FsReport | None = None
    problems: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def overhead(self) -> float:
        return self.upload_bytes / self.file_bytes if self.file_bytes else 0.0

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["overhead"] = round(self.overhead, 4)
        return data

    def table(self) -> str:
        """The result as a Markdown table (also what the README shows)."""
        per_file = Counter(self.records_per_file.values())
        spread = ", ".join(f"{n} record(s): {c} file(s)" for n, c in sorted(per_file.items()))
        kills = sum(self.kills.values()) + sum(self.missed.values()) + self.random_kills
        rows = [
            ("seed", str(self.seed)),
            ("date, cores", f"{self.started}, {self.cores} cores"),
            ("duration", f"{self.seconds / 60:.1f} min"),
            (
                "files",
                f"{self.files} ({format_size(self.file_bytes)}; {format_size(self.smallest)} to "
                f"{format_size(self.largest)}; {self.slow_files} written slowly, "
                f"{self.changed_files} changed mid-upload)",
            ),
            ("chunk sizes", ", ".join(chunk_label(c) for c in self.chunk_sizes)),
            ("kills, total", f"{kills} ({len(self.runs)} daemon starts)"),
        ]
        for name in FAILPOINTS:
            missed = self.missed.get(name, 0)
            extra = f" (+{missed} armed, not reached: killed from outside)" if missed else ""
            rows.append((f"kills at `{name}`", f"{self.kills.get(name, 0)}{extra}"))
        rows += [
            ("kills at random moments", str(self.random_kills)),
            (
                "faults injected",
                ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none",
            ),
            ("records on the server", str(self.records)),
            ("records per file (must be exactly 1)", spread or "-"),
            ("partial or orphan records left (must be 0)", str(self.partial_or_orphan)),
            ("partial records deleted on the way", str(self.deleted_records)),
            ("files that had two records at one moment (must be 0)", str(self.two_at_once)),
            ("files whose server bytes differ (must be 0)", str(self.bytes_differ)),
            ("files not done (must be 0)", str(self.not_done)),
            ("moved files equal to the server's bytes", f"{self.moved_ok} of {self.files}"),
            (
                "bytes sent / bytes of the files",
                f"{format_size(self.upload_bytes)} / {format_size(self.file_bytes)} = "
                f"{self.overhead:.3f} (resend overhead {100 * (self.overhead - 1):.1f} %)",
            ),
            ("internal errors logged (must be 0)", str(self.internal_errors)),
            *(fs_rows(self.fs) if self.fs is not None else []),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        return markdown_table(rows, self.problems, limit=40, gap=True)


def fs_rows(fs: FsReport) -> list[tuple[str, str]]:
    """The file-system part's rows: what was done, and its three must-be-0 counts."""
    kinds: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for label, count in fs.actions.items():
        kind, state = label.split("@")
        kinds[kind] += count
        states[state] += count
    done = sum(fs.actions.values())
    shown = sum(fs.private_shown.values())
    return [
        (
            "file-system actions (daemon as nobody; keep + keep_for, move, delete)",
            f"{done}: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
        ),
        ("file-system actions by job state", ", ".join(f"{k} {v}" for k, v in states.items())),
        (
            "file-system actions given up (no file reached the state in time)",
            f"{sum(fs.missed.values())}"
            + (f" ({', '.join(sorted(fs.missed))})" if fs.missed else ""),
        ),
        (
            "symlink/FIFO/folder swaps left in place, never done (must be all)",
            f"{fs.replacements_ok} of {fs.replacements}",
        ),
        ("regular files whose last version was never uploaded (must be 0)", str(fs.stale_files)),
        (
            "private bytes uploaded (must be 0)",
            f"{fs.private_bytes}"
            + (f" (+ {shown} copies in logs, ledger or metadata)" if shown else ""),
        ),
        (
            "never-uploaded files deleted or moved (must be 0)",
            f"{fs.lost + fs.moved_unuploaded} ({fs.lost} deleted, "
            f"{fs.moved_unuploaded} moved to move_to)",
        ),
        (
            "daemon or loop stops (must be 0)",
            f"{fs.stops} ({fs.daemon_exits} exits, {fs.canaries_missed} canaries not uploaded)",
        ),
    ]


def chunk_label(size: int) -> str:
    return format_size(size) if size else "whole file"
