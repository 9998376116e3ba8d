"""Mount the test file system, cut its power, mount it again.

    with mount(backing, mountpoint) as disk:   # serves in a child process
        ...                                    # use files under mountpoint
        disk.cut()                             # the power cut: unsynced state is gone
        ...                                    # mountpoint shows what the disk kept

A cut SIGKILLs the server (its memory is the volatile state), unmounts the
dead mount and starts a fresh server on the same backing folder. Everything
that uses files under the mount must be stopped first (as a power cut stops
every process): the kernel cannot unmount a mount still in use, and a lazy
unmount would give the next mount another device number.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


class PowerCutError(RuntimeError):
    """The test file system cannot be mounted or unmounted here."""


def missing() -> str | None:
    """Why FUSE mounts cannot work on this machine, or None if they can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse: the kernel has no FUSE (or the container does not pass it in)"
    if shutil.which("fusermount3") is None:
        return "no fusermount3: install Debian's fuse3 (`make .venv/.installed` does it)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy or libfuse3 missing ({exc}): install the dev extras and fuse3"
    return None


class PowerCutMount:
    """One mounted test file system; see the module docstring."""

    def __init__(self, backing: Path, mountpoint: Path, mode: str = "strict") -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.mode = mode
        self.log = backing.with_name(backing.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.cuts = 0
        self.devices: list[int] = []
        self.lazy_unmounts = 0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> PowerCutMount:
        reason = missing()
        if reason:
            raise PowerCutError(f"cannot mount the test file system: {reason}")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if _mounted(self.mountpoint):  # left by an earlier run that died
            self._unmount()
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "powercut", str(self.backing), str(self.mountpoint)]
        command += ["--mode", self.mode, "--ready-fd", str(write_end)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
                env=env,
                start_new_session=True,  # a Ctrl-C to the test run is not a power cut
            )
        os.close(write_end)
        try:
            ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
            if not ready or not os.read(read_end, 1):
                self._kill()
                raise PowerCutError(f"the test file system did not mount: {self._log_tail()}")
        finally:
            os.close(read_end)
        self.devices.append(os.stat(self.mountpoint).st_dev)
        return self

    def cut(self, *, remount: bool = True) -> None:
        """The power cut: drop everything not durable; then (by default) boot again."""
        self._kill()
        self._unmount()
        self.cuts += 1
        if remount:
            self.start()

    def close(self) -> None:
        """Stop serving. Like a cut, what was not durable is lost (tests sync what they keep)."""
        if self.process is not None:
            self._kill()
            self._unmount()

    @property
    def device_changed(self) -> bool:
        """Whether a remount got another ``st_dev`` (identity checks would see new files)."""
        return len(set(self.devices)) > 1

    def __enter__(self) -> PowerCutMount:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- parts ----------------------------------------------------------------

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        process.wait(30)

    def _unmount(self) -> None:
        """Unmount; wait out a brief "busy" (a process that is exiting); lazily as a last resort."""
        for _ in range(100):
            if not _mounted(self.mountpoint):
                return
            done = subprocess.run(
                ["fusermount3", "-u", "-q", str(self.mountpoint)],
                capture_output=True,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.05)
        subprocess.run(["fusermount3", "-u", "-z", "-q", str(self.mountpoint)], check=False)
        self.lazy_unmounts += 1

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(lines[-5:]) or "(empty log)"


def _mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (also a dead FUSE mount: ``lstat`` fails)."""
    wanted = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
        for line in mounts:
            where = line.split(" ")[1]
            for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                where = where.replace(code, char)
            if where == wanted:
                return True
    return False


def mount(backing: Path, mountpoint: Path, mode: str = "strict") -> PowerCutMount:
    """Mount the test file system on ``mountpoint`` with its durable state in ``backing``."""
    return PowerCutMount(backing, mountpoint, mode).start()
