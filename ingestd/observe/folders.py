"""What health reports of the watch folders: each one's state, its problem sentence, the
``ingestd_watch_folder_state`` gauge, the ``folder.*`` alerts and the ledger's copy for
``ingestd status``.

The states come from the health monitor's own probe (with free space, in a thread
with a timeout), so a folder is reported even while nothing scans it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ingestd.config.schema import WatchConfig
from ingestd.disk.folders import FolderState, folder_problem
from ingestd.ledger.api import LEDGER_ERRORS, JobLedger
from ingestd.ledger.model import FolderReport
from ingestd.observe.alerts import Alerter
from ingestd.observe.metrics import Metrics


class FolderHealth:
    """The last probe's folder states, and everything that reports them."""

    def __init__(
        self, watch: WatchConfig, *, metrics: Metrics, alerter: Alerter, redact_paths: bool
    ) -> None:
        self.watch = watch
        self.metrics = metrics
        self.alerter = alerter
        self.redact_paths = redact_paths
        self.states: list[FolderState] = []  # empty until the first probe
        self._since: list[float] = []
        self._recorded: list[FolderReport] | None = None  # as last written to the ledger

    def update(self, states: list[FolderState]) -> None:
        now = time.time()
        if len(self._since) != len(states):
            self._since = [now] * len(states)
        for index, state in enumerate(states):
            if index < len(self.states) and self.states[index] != state:
                self._since[index] = now
            label = self.watch.label(index)
            self.metrics.set_folder_state(label, state)
            self.alerter.folder(label, state, str(self.watch.paths[index]))
        self.states = states

    def problems(self) -> list[str]:
        """One sentence per folder that is not present; the path only without redact_paths."""
        found = []
        for index, state in enumerate(self.states):
            if state != FolderState.PRESENT:
                path: Path | None = None if self.redact_paths else self.watch.paths[index]
                found.append(folder_problem(self.watch.label(index), state, path))
        return found

    def reports(self) -> list[FolderReport]:
        return [
            FolderReport(
                folder=self.watch.label(index),
                path=str(self.watch.paths[index]),
                state=state.value,
                since=self._since[index],
            )
            for index, state in enumerate(self.states)
        ]

    async def record(self, ledger: JobLedger) -> None:
        """Keep the ledger's copy in step (``ingestd status`` reads it); written on a change."""
        reports = self.reports()
        if not reports or reports == self._recorded:
            return
        try:
            await ledger.set_folder_states(reports)
        except LEDGER_ERRORS:
            return  # the ledger's own problem is reported; try again at the next look
        self._recorded = reports
