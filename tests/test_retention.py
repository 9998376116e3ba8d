"""ledger.forget_after: done jobs whose source is gone are forgotten; nothing else is."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from conftest import (
    ledger_rows,
    log_events,
    random_file,
    run_cli,
    run_once,
    start_daemon,
    stop_process,
    wait_for,
    write_config,
)
from ledger_support import add_job_in
from structlog.testing import capture_logs

from ingestd.fake_valt import FakeValtThread
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger
from ingestd.upload.retention import forget_old

DAY = 86400.0
FORGET_AFTER = 400 * DAY


class Files:
    """Real files under real watch folders, and done jobs in a real ledger about them."""

    def __init__(self, tmp_path: Path, ledger: SqliteLedger) -> None:
        self.tmp_path = tmp_path
        self.ledger = ledger
        self.old = time.time() - FORGET_AFTER - DAY
        self.recent = time.time() - DAY

    async def job(
        self, name: str, state: State = State.DONE, root: str = "export", **fields: Any
    ) -> tuple[int, Path]:
        """A file, and a job in ``state`` for it (done an age ago unless ``done_at`` says)."""
        path = self.tmp_path / root / name
        random_file(path, 100, seed=len(name))
        info = os.lstat(path)
        if state is State.DONE:
            fields = {"done_at": self.old, "after_done": 1, "final_path": str(path), **fields}
        job = await add_job_in(
            self.ledger,
            state,
            path=str(path),
            root=str(self.tmp_path / root),
            snapshot=(info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev),
            **fields,
        )
        return job.id, path


async def test_old_done_jobs_whose_source_is_gone_are_forgotten_and_no_other(
    tmp_path: Path,
) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    files = Files(tmp_path, ledger)
    archive = tmp_path / "archive"
    try:
        # Forgotten: moved away by move_to, deleted by the action, expired by keep_for,
        # kept and since deleted by hand (its folder with it), replaced by a newer job.
        moved, moved_path = await files.job("moved.mp4")
        archive.mkdir()
        moved_path.rename(archive / "moved.mp4")
        await ledger.update(moved, final_path=str(archive / "moved.mp4"))
        deleted, deleted_path = await files.job("deleted.mp4", final_path=None)
        deleted_path.unlink()
        await ledger.update(deleted, cleaned_at=files.old)
        expired, expired_path = await files.job("expired.mp4")
        expired_path.unlink()
        await ledger.update(expired, cleaned_at=time.time())
        by_hand, by_hand_path = await files.job("room/by hand.mp4")
        by_hand_path.unlink()
        by_hand_path.parent.rmdir()
        replaced, _ = await files.job("replaced.mp4", left_alone="replaced")
        newer, _ = await files.job("replaced.mp4", State.WAITING)  # the file there now
        # Kept: still in the watch folder; its after-upload step still due (held back while
        # another job owned the file, or interrupted); done too recently; not done at all;
        # or out of sight only (its share unmounted: the watch folder gone, or an empty
        # mount point on another device).
        there, _ = await files.job("still there.mp4")
        owned, owned_path = await files.job("owned.mp4", left_alone="owned", final_path=None)
        pending, pending_path = await files.job("pending.mp4", after_done=0, final_path=None)
        owned_path.unlink()  # gone, but the after-upload step is still due for both
        pending_path.unlink()
        recent, recent_path = await files.job("recent.mp4", done_at=files.recent)
        recent_path.unlink()
        kept_alive = [there, owned, pending, recent]
        for state in (State.FAILED, State.SKIPPED, State.WAITING, State.UPLOADING):
            job_id, path = await files.job(f"{state.value}.mp4", state, discovered_at=files.old)
            path.unlink()
            kept_alive.append(job_id)
        share, share_path = await files.job("share.mp4", root="share")
        share_path.unlink()
        (tmp_path / "share").rmdir()
        remounted, remounted_path = await files.job("remounted.mp4")
        remounted_path.unlink()
        await ledger.update(remounted, device=os.lstat(tmp_path).st_dev + 1)
        kept_alive += [newer, share, remounted]
        before = {row["id"] for row in ledger_rows(tmp_path / "ledger.db")}

        with capture_logs() as logged:
            assert await forget_old(ledger, FORGET_AFTER) == 5
            assert await forget_old(ledger, FORGET_AFTER) == 0  # nothing more, no second line

        left = {row["id"] for row in ledger_rows(tmp_path / "ledger.db")}
        assert before - left == {moved, deleted, expired, by_hand, replaced}
        assert left == set(kept_alive)
        assert [entry for entry in logged if entry["event"] == "ledger.forgot"] == [
            {
                "event": "ledger.forgot",
                "log_level": "info",
                "jobs": 5,
                "kept": 3,  # the old done ones looked at and kept: still there, share, remounted
                "forget_after_s": FORGET_AFTER,
            }
        ]
    finally:
        await ledger.close()


async def test_forgetting_goes_in_batches(tmp_path: Path) -> None:
    ledger = await SqliteLedger.open(tmp_path / "ledger.db")
    files = Files(tmp_path, ledger)
    try:
        for n in range(1203):
            job_id, path = await files.job(f"clip{n}.mp4", final_path=None)
            path.unlink()
            await ledger.update(job_id, cleaned_at=files.old)
        assert await forget_old(ledger, FORGET_AFTER) == 1202
        # The newest stays: else SQLite would give its id to the next new job.
        assert [row["id"] for row in ledger_rows(tmp_path / "ledger.db")] == [1203]
    finally:
        await ledger.close()


def _export(config: Path) -> list[str]:
    result = run_cli("export", "-c", str(config))
    assert result.returncode == 0, result.stderr
    return [line.split(",")[0] for line in result.stdout.splitlines()[1:]]


def test_export_lists_a_file_until_it_is_forgotten_and_then_it_is_a_new_file(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    archive = tmp_path / "archive"
    clip = export / "clip.mp4"
    random_file(clip, 1000, seed=1)
    after_upload = {"action": "move", "move_to": str(archive)}
    config = write_config(tmp_path, server.url, after_upload=after_upload)
    assert run_once(config, "10s").returncode == 0
    [done] = ledger_rows(tmp_path / "ledger.db")
    assert (archive / "clip.mp4").exists() and not clip.exists()
    wait_for(lambda: time.time() > done["done_at"] + 1.5, timeout=10)
    random_file(export / "later.mp4", 1000, seed=2)
    assert run_once(config, "10s").returncode == 0
    assert _export(config) == [str(clip), str(export / "later.mp4")]  # clip: past the cut-off

    config = write_config(
        tmp_path, server.url, after_upload=after_upload, ledger={"forget_after": "1s"}
    )
    log_file = tmp_path / "daemon.log"
    daemon = start_daemon(config, log_file)  # forgets at start-up
    try:
        wait_for(lambda: [e for e in log_events(log_file) if e["event"] == "ledger.forgot"])
        assert [row["path"] for row in ledger_rows(tmp_path / "ledger.db")] == [
            str(export / "later.mp4")  # too recent (and the newest job)
        ]
        assert _export(config) == [str(export / "later.mp4")]
        # The cost: the same recording put back is a new file, and is uploaded again.
        (archive / "clip.mp4").rename(clip)
        wait_for(lambda: len(ledger_rows(tmp_path / "ledger.db")) == 2)
        wait_for(lambda: [r["state"] for r in ledger_rows(tmp_path / "ledger.db")] == ["done"] * 2)
    finally:
        assert stop_process(daemon) == 0
    again = ledger_rows(tmp_path / "ledger.db")[-1]
    assert again["path"] == str(clip) and again["id"] == 3  # a new job, with an id of its own
    assert again["record_id"] != done["record_id"]
    assert len(server.snapshot()["records"]) == 3
    assert _export(config) == [str(export / "later.mp4"), str(clip)]
