"""The power-cut campaign's figures, the invariants that failed, and its table."""

from __future__ import annotations

from dataclasses import dataclass, field

from chaos.harness import markdown_table


@dataclass
class Report:
    """The campaign's figures and the invariants that failed."""

    seed: int
    mode: str
    started: str
    cuts: int = 0
    cuts_per_state: dict[str, int] = field(default_factory=dict)
    recordings: int = 0
    finished: int = 0
    restarted_arrivals: int = 0
    recordings_lost: int = 0
    duplicates: int = 0
    ledger_damage: int = 0
    truncated_final: int = 0
    done_incomplete: int = 0
    partial_records_left: int = 0
    actions_undone: int = 0
    failed_not_set_aside: int = 0
    rotations_undone: int = 0
    backups_aged: int = 0
    daemon_exits: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    device_changes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set, repr=False)
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def flag(self, counter: str, key: str, text: str) -> None:
        """Count one case of a broken invariant once, however many cuts find it again."""
        if key in self.seen:
            return
        self.seen.add(key)
        setattr(self, counter, getattr(self, counter) + 1)
        self.problems.append(text)

    def table(self) -> str:
        states = ", ".join(f"{k} {v}" for k, v in sorted(self.cuts_per_state.items())) or "-"
        rows = [
            ("seed, durability mode", f"{self.seed}, {self.mode}"),
            ("date, duration", f"{self.started}, {self.seconds / 60:.1f} min"),
            ("power cuts", str(self.cuts)),
            ("jobs per state at the cuts (as the disk kept them)", states),
            (
                "recordings (finished arriving; started over after a cut)",
                f"{self.recordings} ({self.finished}; {self.restarted_arrivals})",
            ),
            ("backups aged by a day (a new one and a rotation due)", str(self.backups_aged)),
            ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))),
            ("recordings lost (must be 0)", str(self.recordings_lost)),
            ("duplicates: two records for one recording (must be 0)", str(self.duplicates)),
            ("ledger damage (must be 0)", str(self.ledger_damage)),
            ("truncated files under final names (must be 0)", str(self.truncated_final)),
            ("done jobs whose server copy is incomplete (must be 0)", str(self.done_incomplete)),
            ("partial records left at the end (must be 0)", str(self.partial_records_left)),
            (
                "after-upload actions the ledger holds and the disk lost (must be 0)",
                str(self.actions_undone),
            ),
            (
                "failed recordings never set aside to failed_to (must be 0)",
                str(self.failed_not_set_aside),
            ),
            (
                "ledgers with more backups than ledger.backups (must be 0)",
                str(self.rotations_undone),
            ),
            ("daemons that exited by themselves (must be 0)", str(self.daemon_exits)),
            (
                "remounts with another st_dev (another mount took the number; files look new)",
                str(self.device_changes),
            ),
            ("result", "PASS" if self.ok else "FAIL"),
        ]
        return markdown_table(rows, self.problems, limit=60, gap=False)
