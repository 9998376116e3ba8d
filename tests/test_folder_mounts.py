"""An unmounted share (``watch.require_mount``) is noticed and named, and nothing is lost
or sent twice when it is mounted again: real tmpfs and bind mounts, the daemon as a real
process, the fake Valt server over loopback. Apart from test_folder_states.py because it
mounts file systems: such tests share one worker (conftest.ONE_WORKER)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from conftest import (
    KiB,
    free_port,
    ledger_rows,
    random_file,
    server_videos,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from test_folder_states import _done, _folder_metric, _folder_state, _healthy, _job
from test_health import _unhealthy_with

from ingestd.disk.folders import FolderState, folder_state
from ingestd.fake_valt import FakeValtThread


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _umount(path: Path) -> None:
    """As an operator would: a share the daemon is reading at that moment (a scan holds a
    folder open, a check a file) is busy; it must be free again within seconds."""
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        if done.returncode != 32 or time.monotonic() > deadline:  # 32: busy, among others
            raise AssertionError(f"umount {path}: {done.stderr.strip()}")
        time.sleep(0.2)


def test_require_mount_shows_an_unmounted_share_and_keeps_its_jobs(
    tmp_path: Path, server: FakeValtThread
) -> None:
    # The share lives on a tmpfs of its own and is bind-mounted over the watch folder:
    # os.path.ismount sees a mount only where the device changes, and the tmpfs keeps
    # the files while the bind mount is away (as a file server does).
    backing, export = tmp_path / "backing", tmp_path / "export"
    backing.mkdir()
    export.mkdir()
    _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(backing))
    share = backing / "share"
    share.mkdir()
    random_file(share / "a.mp4", 100 * KiB, seed=1)
    (share / "a.mp4.done").touch()
    random_file(share / "c.mp4", 100 * KiB, seed=3)  # waits for c.mp4.done
    port = free_port()
    config = write_config(
        tmp_path,
        server.url,
        watch={"require_mount": True, "done_marker": ".done", "min_free": "1MiB"},
        status={"listen": f"127.0.0.1:{port}"},
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    mounted = False
    try:
        # Not mounted yet: the empty mount point is "unmounted", not an empty folder.
        body = _unhealthy_with(port, "is not a mount point")
        assert any("watch.paths[0]" in problem for problem in body["problems"])
        assert _folder_metric(port, "watch.paths[0]", "unmounted") == 1

        _mount("--bind", str(share), str(export))
        mounted = True
        wait_for(lambda: _done(tmp_path, "a.mp4"))
        wait_for(lambda: (_job(tmp_path, "c.mp4") or {}).get("wait_reason"))
        wait_for(lambda: _folder_metric(port, "watch.paths[0]", "present") == 1, timeout=10)

        _umount(export)
        mounted = False
        _unhealthy_with(port, "is not a mount point")
        wait_for(lambda: _folder_state(config, "watch.paths[0]") == "unmounted")
        time.sleep(3)  # settle passes and a rescan over the empty mount point
        job = _job(tmp_path, "c.mp4")
        assert job is not None and job["state"] == "waiting", job
        assert "not a mount point" in job["wait_reason"]

        _mount("--bind", str(share), str(export))
        mounted = True
        (export / "c.mp4.done").touch()
        wait_for(lambda: _done(tmp_path, "c.mp4"))
        _healthy(port)
        time.sleep(2.5)  # another rescan: a.mp4 is not sent again
    finally:
        try:
            assert stop_process(daemon) == 0
        finally:
            if mounted:
                _umount(export)
            _umount(backing)
    assert sorted(server_videos(server)) == ["a", "c"]
    assert len(server.snapshot()["records"]) == 2
    assert sorted(r["state"] for r in ledger_rows(tmp_path / "ledger.db")) == ["done", "done"]


def test_folder_state_tells_missing_unmounted_and_present_apart(tmp_path: Path) -> None:
    folder = tmp_path / "share"
    assert folder_state(folder, require_mount=False) == FolderState.MISSING
    folder.write_text("a file where the folder should be")
    assert folder_state(folder, require_mount=False) == FolderState.MISSING
    folder.unlink()
    folder.mkdir()
    assert folder_state(folder, require_mount=False) == FolderState.PRESENT
    assert folder_state(folder, require_mount=True) == FolderState.UNMOUNTED
    _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder))
    try:
        assert folder_state(folder, require_mount=True) == FolderState.PRESENT
    finally:
        _umount(folder)
