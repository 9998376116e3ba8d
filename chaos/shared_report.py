"""The shared-ledger campaign's result: the checks (found against expected), the figures,
the problems found, as a Markdown table and as JSON."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chaos.harness import markdown_table
from chaos.report import chunk_label
from ingestd.units import format_size


@dataclass
class SharedReport:
    """The table's numbers and the problems found (any problem fails the campaign)."""

    seed: int
    options: dict[str, Any]
    started: str
    cores: int
    nodes: list[str] = field(default_factory=list)
    lease: float = 0.0
    files: int = 0
    copies: int = 0
    file_bytes: int = 0
    recording_bytes: int = 0
    """The bytes to upload: each recording once (a copy is not sent)."""
    smallest: int = 0
    largest: int = 0
    slow_files: int = 0
    chunk_sizes: list[int] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    kills: dict[str, int] = field(default_factory=dict)
    pg_kill_at: float | None = None
    pg_down_s: float = 0.0
    cut_node: str = ""
    cut_at: float | None = None
    cut_s: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    records: int = 0
    records_per_file: dict[str, int] = field(default_factory=dict)
    """A file and its copies count as one (their bytes are one recording): exactly 1."""
    orphans: int = 0
    bytes_differ: int = 0
    not_done: int = 0
    skipped_copies: int = 0
    overlapping_chunks: int = 0
    """The fake's own count: every overlap inside its handler (``shared_server.py``)."""
    two_senders: int = 0
    """Overlaps whose two senders were both still connected: must be 0."""
    other_overlaps: list[str] = field(default_factory=list)
    """Overlaps with a request its sender had already given up on, or of one node."""
    two_records_at_once: int = 0
    internal_errors: int = 0
    own_exits: int = 0
    moved_ok: int = 0
    taken_over: int = 0
    taken_over_jobs: list[str] = field(default_factory=list)
    uploads_taken_over: int = 0
    """Of those, jobs whose upload another node than the record's maker completed."""
    claims_lost: int = 0
    upload_bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["checks"] = [
            {"check": name, "found": found, "expected": want, "ok": good}
            for name, found, want, good in self.checks()
        ]
        return data

    def checks(self) -> list[tuple[str, str, str, bool]]:
        """(check, found, expected, holds) for every invariant."""
        spread = Counter(self.records_per_file.values())
        per_file = ", ".join(f"{n} record(s): {c} file(s)" for n, c in sorted(spread.items()))
        originals = self.files - self.copies
        return [
            (
                "records per file (a file and its copies count as one)",
                per_file or "-",
                "exactly 1",
                set(spread) == {1},
            ),
            _count("copies skipped as duplicates (not uploaded)", self.skipped_copies, self.copies),
            _count("orphans: records no done job accounts for, or partial", self.orphans),
            _count("byte mismatches: sha256 of a record vs its file", self.bytes_differ),
            _count("files not done", self.not_done),
            _count("moments when two nodes sent chunks of one job at once", self.two_senders),
            _count("files that had two records at one moment", self.two_records_at_once),
            _count("files moved out of the share, equal to their source", self.moved_ok, originals),
            _count("internal errors logged", self.internal_errors),
            _count("daemons that exited by themselves or not cleanly", self.own_exits),
        ]

    def figures(self) -> list[tuple[str, str]]:
        kills = sum(self.kills.values())
        per_node = ", ".join(f"{n} {self.kills.get(n, 0)}" for n in self.nodes)
        pg_kill = (
            f"1, at {self.pg_kill_at:.1f} s, down {self.pg_down_s:.1f} s"
            if self.pg_kill_at is not None
            else "0"
        )
        cut = (
            f"node {self.cut_node}, at {self.cut_at:.1f} s, for {self.cut_s:.1f} s "
            f"({self.cut_s / self.lease:.1f} leases)"
            if self.cut_at is not None
            else "none"
        )
        sent = self.upload_bytes
        overhead = sent / self.recording_bytes if self.recording_bytes else 0.0
        return [
            ("seed", str(self.seed)),
            ("date, cores", f"{self.started}, {self.cores} cores"),
            ("wall time", f"{self.seconds:.0f} s ({self.seconds / 60:.1f} min)"),
            ("nodes", f"{', '.join(self.nodes)} (ledger.lease {self.lease:g} s)"),
            (
                "files",
                f"{self.files} ({format_size(self.file_bytes)}; {format_size(self.smallest)} to "
                f"{format_size(self.largest)}; {self.slow_files} written slowly, "
                f"{self.copies} copies of another file)",
            ),
            ("chunk sizes", ", ".join(chunk_label(c) for c in self.chunk_sizes)),
            ("node kills (SIGKILL)", f"{kills} ({per_node}); {sum(self.starts.values())} starts"),
            ("PostgreSQL kills (SIGKILL)", pg_kill),
            ("cut off from PostgreSQL", cut),
            (
                "jobs taken over by another node (record made by one, done by another)",
                f"{self.taken_over} ({self.uploads_taken_over} of them uploaded to the end "
                "by another node, the others confirmed by another)",
            ),
            ("claims found lost at a renewal", str(self.claims_lost)),
            (
                "faults injected",
                ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none",
            ),
            (
                "overlaps inside the fake (its overlapping_chunks)",
                f"{self.overlapping_chunks} ({len(self.other_overlaps)} of one node, or with a "
                "request its sender had given up on: a slow answer, cut short, killed)",
            ),
            ("records on the server", str(self.records)),
            (
                "bytes sent / bytes of the recordings (copies not counted)",
                f"{format_size(sent)} / {format_size(self.recording_bytes)} = {overhead:.3f}",
            ),
        ]

    def table(self) -> str:
        """The checks (found, expected), then the figures and the problems."""
        checks = self.checks()
        width = max(len(name) for name, *_ in checks)
        lines = [
            f"| {'check':<{width}} | found | expected | |",
            f"| {'-' * width} | --- | --- | --- |",
        ]
        lines += [
            f"| {name:<{width}} | {found} | {want} | {'ok' if good else 'MISS'} |"
            for name, found, want, good in checks
        ]
        result = ("result", "PASS" if self.ok else "FAIL")
        figures = markdown_table([*self.figures(), result], self.problems, limit=40, gap=True)
        return "\n".join(lines) + "\n\n" + figures


def _count(name: str, found: int, expected: int = 0) -> tuple[str, str, str, bool]:
    return name, str(found), str(expected), found == expected
