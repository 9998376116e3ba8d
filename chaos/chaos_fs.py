"""The file-system part of the campaign: the disk changes under the daemon's feet.

Three phases, one for each after-upload action (``keep`` with ``keep_for``,
``move``, ``delete``), each with its own watch folder, ledger and a gentle
fake server (no faults but a late ``ready``, so that a job spends time in
every state). The daemon runs as nobody (uid 65534, no groups): it runs as
root otherwise, and root reads every file and every folder whatever its mode.

At seeded moments of each job state (``settle``, ``uploading``,
``confirming``, ``after-action``) the campaign does one of these to a video
the daemon knows:

- replaces it (``rename`` over it) by another file, by a symlink to a private
  0600 file outside the watch root that the daemon can read (like its own
  password file), by a FIFO or by a folder;
- truncates it, or appends to it;
- renames it out of the watch folder and back a moment later;
- replaces its sidecar by garbage: ``[`` * 100000 + ``]`` * 100000 as JSON or
  YAML, random bytes, or a symlink to the private file;
- makes its folder unreadable, then readable again.

"After-action" is, with ``keep``, the time between ``done`` and the
``keep_for`` expiry (the daemon is restarted once it is due, as after a
reboot); with ``move`` and ``delete``, the daemon is killed at the
``before_after_action`` failpoint, the file is changed, and the next start
finishes the action.

What the campaign accepts, the same under every action: a path replaced by a
symlink, FIFO or folder is left where it is and as it is (not deleted, not
moved, not followed); its job never becomes ``done`` after the swap (it waits,
fails or is forgotten; a job done before the swap stays done, its action not
carried out on the replacement); nothing of the private file reaches the
server, the log or the ledger; and the loop goes on (a canary dropped at the
end of the phase is uploaded). A regular file, whatever happened to it, has
its last version uploaded; and no version the campaign wrote and did not
itself overwrite is lost: it reached the server byte for byte, or it is
still in the watch folder. With ``move``, a version found only in
``move_to`` that never reached the server counts as moved away unuploaded.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import threading
from pathlib import Path

from chaos.fs_actions import PrivateTap, give_to_nobody
from chaos.fs_checks import check_campaign, check_phase
from chaos.fs_phase import Phase
from chaos.fs_plan import (
    ACTIONS,
    KINDS,
    PASSWORD,
    STATES,
    FsOptions,
    FsReport,
    FsShared,
    plan_phases,
)
from chaos.harness import KiB, fake_server, sha256_file
from ingestd.fake_valt import Faults

__all__ = ["KINDS", "STATES", "FsCampaign", "FsOptions", "FsReport", "run_fs_campaign"]


class FsCampaign:
    """The three phases against one gentle server, and the checks across them."""

    def __init__(self, options: FsOptions) -> None:
        self.options = options
        self.rng = random.Random(f"{options.seed}:fs")
        self.report = FsReport()
        self.marker = f"PRIVATE-{options.seed:x}-never-upload-this".encode()

    def run(self) -> FsReport:
        self.base = Path(tempfile.mkdtemp(prefix="ingestd-chaos-fs-"))
        self.base.chmod(0o755)  # pytest's tmp_path is root's alone: nobody cannot reach it
        give_to_nobody(self.base)
        self.report.workdir = str(self.base)
        private_folder = self.base / "private"
        private_folder.mkdir(mode=0o700)
        give_to_nobody(private_folder)
        private = private_folder / "secret.key"
        line = self.marker + b"\n"
        private.write_bytes(line * (64 * KiB // len(line)))
        private.chmod(0o600)
        give_to_nobody(private)
        private_sha = sha256_file(private)
        tap = PrivateTap(self.marker)
        faults = Faults(ready_delay=1.0, seed=self.options.seed)
        phases: list[Phase] = []
        try:
            with (
                fake_server(self.base / "server", faults, PASSWORD) as server,
                tap.installed(),
            ):
                shared = FsShared(self.options, self.base, self.report, server, private)
                # The phases share nothing but the server: run them at once.
                plans = plan_phases(self.rng, self.options.actions_per_phase)
                for action, plan in zip(ACTIONS, plans, strict=True):
                    phases.append(Phase(shared, action, plan))
                threads = [threading.Thread(target=self.run_phase, args=(p,)) for p in phases]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                check_campaign(shared, phases, tap, self.marker, private_sha)
        finally:
            for folder, dirs, _files in os.walk(self.base):
                for name in dirs:
                    with contextlib.suppress(OSError):
                        os.chmod(os.path.join(folder, name), 0o755, follow_symlinks=False)
        if not self.report.problems:
            shutil.rmtree(self.base, ignore_errors=True)
        return self.report

    def run_phase(self, phase: Phase) -> None:
        try:
            phase.run()
            check_phase(phase)
        except Exception as exc:  # the campaign's own failure: say so, never hide it
            phase.problem(f"the campaign failed: {exc!r}")
            raise


def run_fs_campaign(options: FsOptions) -> FsReport:
    return FsCampaign(options).run()
