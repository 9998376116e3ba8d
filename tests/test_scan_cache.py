"""Rescans keep done jobs in memory (a hash a file), and a settle pass queues its finished files
together."""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from conftest import intake_for_tests, random_file
from ledger_support import set_state

from ingestd.intake import settled as settled_module
from ingestd.intake.settled import DIGEST_MIN, SettledFiles
from ingestd.intake.waiting import SETTLED
from ingestd.ledger.model import State
from ingestd.ledger.store import SqliteLedger


async def _finish_all(ledger: SqliteLedger) -> None:
    """As if every live job had been uploaded and confirmed."""
    for job in await ledger.jobs_in([s for s in State if s not in SETTLED]):
        await set_state(ledger, job.id, State.DONE, done_at=1.0)


async def test_rescans_read_only_live_jobs_and_still_see_a_replaced_file(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        random_file(export / "a.mkv", 1000, seed=1)
        random_file(export / "b.mkv", 1000, seed=2)
        assert await intake.scan("startup") == 2
        await _finish_all(ledger)

        # From now on no scan reads the whole ledger.
        async def no_full_read() -> None:
            raise AssertionError("known_snapshots() read the whole ledger again")

        monkeypatch.setattr(ledger, "known_snapshots", no_full_read)
        assert await intake.scan("interval") == 0  # done and unchanged
        assert await intake.scan("interval") == 0

        random_file(export / "a.mkv", 2000, seed=3)  # replaced after done: a new job
        assert await intake.scan("interval") == 1
        jobs = [job for job in await ledger.jobs_in(list(State)) if job.path.endswith("a.mkv")]
        assert [job.state for job in jobs] == [State.DONE, State.WAITING]
        assert jobs[1].size == 2000

        await _finish_all(ledger)  # the new job settles between scans: the cache learns it
        assert await intake.scan("interval") == 0
        random_file(export / "c.mkv", 10, seed=4)
        assert await intake.scan("interval") == 1
    finally:
        await ledger.close()


async def test_a_forgotten_job_does_not_hide_its_file(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        random_file(export / "a.mkv", 1000, seed=1)
        assert await intake.scan("startup") == 1
        [job] = await ledger.jobs_in([State.WAITING])
        await ledger.forget(job.id)  # its file vanished while waiting...
        assert await intake.scan("interval") == 1  # ...and came back: a job again
        assert len(await ledger.jobs_in([State.WAITING])) == 1
    finally:
        await ledger.close()


async def test_one_pass_queues_one_of_two_identical_files(tmp_path: Path, export: Path) -> None:
    intake, ledger = await intake_for_tests(tmp_path, settle=0)
    try:
        for name in ("one.mkv", "two.mkv", "other.mkv"):
            random_file(export / name, 5000, seed=9 if name != "other.mkv" else 10)
        assert await intake.scan("startup") == 3
        await intake.settle()
        jobs = {Path(job.path).name: job for job in await ledger.jobs_in(list(State))}
        assert jobs["other.mkv"].state == State.QUEUED
        states = sorted((jobs["one.mkv"].state, jobs["two.mkv"].state))
        assert states == [State.QUEUED, State.WAITING]
        waiting = next(job for job in jobs.values() if job.state == State.WAITING)
        queued = next(j for n, j in jobs.items() if j.state == State.QUEUED and n != "other.mkv")
        assert waiting.wait_reason == f"same content as job {queued.id}, in progress"
    finally:
        await ledger.close()


def _stat_rows(files: list[Path], root: Path) -> list[tuple[Any, ...]]:
    now = time.time()
    rows = []
    for path in files:
        info = path.stat()
        rows.append(
            (str(path), str(root), info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev, now)
        )
    return rows


async def _done_in_bulk(ledger: SqliteLedger, files: list[Path], root: Path) -> None:
    """Done jobs for ``files``, as an upload leaves them, in one statement."""
    await ledger._conn.executemany(
        "INSERT INTO jobs(path, root, state, size, mtime_ns, inode, device, discovered_at, "
        "updated_at, done_at, after_done) VALUES(?,?,'done',?,?,?,?,?,0,0,1)",
        _stat_rows(files, root),
    )


async def test_settled_files_cost_no_python_object_each(tmp_path: Path, export: Path) -> None:
    """20,000 done files: what the scans keep of them is a few bytes a file (a hash), not a
    path and a tuple each, so a million fit in a few MiB."""
    files = []
    for number in range(20_000):
        path = export / f"day-{number // 1000:02d}" / f"clip-{number:05d}.ts"
        if number % 1000 == 0:
            path.parent.mkdir()
        path.write_bytes(b"%d" % number)
        files.append(path)
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        await _done_in_bulk(ledger, files, export)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            assert await intake.scan("startup") == 0
            assert await intake.scan("interval") == 0
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < 20_000 * 24, f"{held / 20_000:.0f} bytes a settled file"
        assert len(await ledger.jobs_in([State.DONE])) == 20_000
    finally:
        await ledger.close()


async def test_an_unchanged_folder_is_one_comparison_and_a_change_is_still_seen(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [export / "room" / f"{n:03d}.mkv" for n in range(DIGEST_MIN + 36)]
    for number, path in enumerate(files):
        random_file(path, 100, seed=number)
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        await _done_in_bulk(ledger, files, export)
        assert await intake.scan("startup") == 0
        looked_up: list[int] = []
        found = SettledFiles._found
        monkeypatch.setattr(
            SettledFiles, "_found", lambda self, key: looked_up.append(key) or found(self, key)
        )
        assert await intake.scan("interval") == 0
        assert looked_up == []  # the folder was taken on its digest, not file by file

        info = files[7].stat()
        files[7].unlink()
        random_file(files[7], 100, seed=1000)  # same size, other bytes, another inode maybe
        os.utime(files[7], ns=(info.st_atime_ns, info.st_mtime_ns))  # even the same mtime
        new_inode = files[7].stat().st_ino != info.st_ino
        assert await intake.scan("interval") == (1 if new_inode else 0)
        with open(files[9], "ab") as handle:
            handle.write(b"more")
        assert await intake.scan("interval") == 1
        changed = {job.path for job in await ledger.jobs_in([State.WAITING])}
        assert str(files[9]) in changed and (str(files[7]) in changed) == new_inode
    finally:
        await ledger.close()


async def test_a_settled_job_taken_up_again_is_looked_at_in_an_unchanged_folder(
    tmp_path: Path, export: Path
) -> None:
    """``ingestd retry --force`` of a skipped file (another process) makes its job live in a
    folder whose files have not changed: the scan still starts watching it."""
    files = [export / "room" / f"{n:03d}.mkv" for n in range(DIGEST_MIN + 6)]
    for number, path in enumerate(files):
        random_file(path, 100, seed=number)
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        await _done_in_bulk(ledger, files, export)
        [first] = await ledger.jobs_in([State.DONE], limit=1)
        await set_state(ledger, first.id, State.SKIPPED)
        assert await intake.scan("startup") == 0
        assert await intake.scan("interval") == 0
        assert await ledger.retry([first.id], force=True) == [first.id]
        intake.waiting.tracking.clear()
        assert await intake.scan("interval") == 0
        assert first.id in intake.waiting.tracking
    finally:
        await ledger.close()


def _on_disk(export: Path) -> dict[str, tuple[int, int, int]]:
    found = {}
    for path in export.rglob("*.mkv"):
        info = path.stat()
        found[str(path)] = (info.st_size, info.st_mtime_ns, info.st_ino)
    return found


async def _newest(ledger: SqliteLedger) -> dict[str, tuple[int, State, tuple[int, int, int]]]:
    newest = {}
    for job in await ledger.jobs_in(list(State)):  # by id: the newest of a path comes last
        newest[job.path] = (job.id, job.state, (job.size, job.mtime_ns, job.inode))
    return newest


async def _random_change(
    rng: random.Random, export: Path, away: Path, ledger: SqliteLedger, made: int
) -> int:
    """One change to the files or the jobs; returns how many files were ever made."""
    kind = rng.randrange(6)
    files = sorted(export.rglob("*.mkv"))
    if kind == 0 or not files:
        made += 1
        random_file(export / f"f{rng.randrange(3)}" / f"{made}.mkv", 10, seed=made)
    elif kind == 1:
        with open(rng.choice(files), "ab") as handle:
            handle.write(b"x")
    elif kind == 2:
        rng.choice(files).unlink()
    elif kind == 3:
        moved = rng.choice(files)
        moved.rename(away / f"{moved.parent.name}-{moved.name}")
    elif kind == 4 and any(away.iterdir()):
        back = rng.choice(sorted(away.iterdir()))
        folder, _, name = back.name.partition("-")
        place = export / folder / name
        if not place.exists() and rng.random() < 0.5:
            made += 1
            random_file(place, 10, seed=made)  # another file takes the path
        elif rng.random() < 0.5 or not place.exists():
            back.rename(place)  # back, over the file there now, if any
    else:
        newest = await _newest(ledger)
        skipped = sorted(job_id for job_id, state, _i in newest.values() if state == State.SKIPPED)
        if skipped:
            await ledger.retry([rng.choice(skipped)], force=True)
    return made


@pytest.mark.parametrize("seed", range(12))
async def test_scans_with_the_cache_make_exactly_the_jobs_the_ledger_calls_for(
    tmp_path: Path, export: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Against the rule itself - a file gets a new job when its path has none, or when the
    newest is settled and the file changed - over random changes between scans: files
    added, rewritten, deleted, moved away and back (over the file that took the path
    meanwhile), jobs settled, failed as gone, taken up again by ``retry --force``. Small
    buckets and digests, so every path of the cache is taken."""
    monkeypatch.setattr(settled_module, "BUCKET_FILES", 4)
    monkeypatch.setattr(settled_module, "DIGEST_MIN", 6)
    rng = random.Random(seed)
    away = tmp_path / "away"
    away.mkdir()
    for index in range(60):
        random_file(export / f"f{index % 3}" / f"{index}.mkv", 10, seed=index)
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        await intake.scan("startup")
        made = 60
        for _step in range(40):
            for _change in range(rng.randrange(0, 6)):
                made = await _random_change(rng, export, away, ledger, made)
            for job in await ledger.jobs_in([State.WAITING]):
                if rng.random() < 0.7:
                    await set_state(ledger, job.id, rng.choice([State.DONE, State.SKIPPED]))
                elif rng.random() < 0.3:  # its file went mid-upload; the scan takes it up
                    await set_state(ledger, job.id, State.FAILED, fail_reason="source_missing")
            intake.waiting.tracking.clear()  # each scan must show every live job's file
            disk, newest = _on_disk(export), await _newest(ledger)
            due = {
                path
                for path, identity in disk.items()
                if path not in newest
                or (newest[path][1] in SETTLED and newest[path][2] != identity)
            }
            await intake.scan("interval")
            after = await _newest(ledger)
            got = {p for p, (job_id, _s, _i) in after.items() if newest.get(p, (0,))[0] != job_id}
            assert got == due
            tracking = intake.waiting.tracking
            for path, (job_id, state, _identity) in after.items():
                if path in disk:
                    assert state != State.FAILED, f"{path}: job {job_id} not taken up again"
                    if state == State.WAITING:
                        assert job_id in tracking, f"{path}: waiting job {job_id} not watched"
    finally:
        await ledger.close()


@pytest.mark.parametrize("files", [3, DIGEST_MIN + 8])
async def test_a_file_put_back_over_its_replacement_is_new_again(
    tmp_path: Path, export: Path, files: int
) -> None:
    """Done as A; A moved away and B written at its path (seen by a folder event), done
    too; then A moved back over B before a scan: the path's newest job is B's, so A is a
    new file again (its copy check may then skip it), whatever the cache held of A."""
    paths = [export / "room" / f"{n:03d}.mkv" for n in range(files)]
    for number, path in enumerate(paths):
        random_file(path, 100, seed=number)
    intake, ledger = await intake_for_tests(tmp_path)
    try:
        await _done_in_bulk(ledger, paths, export)
        assert await intake.scan("startup") == 0
        paths[1].rename(tmp_path / "a.mkv")
        random_file(paths[1], 100, seed=500)
        await intake.observe_path(paths[1])  # a folder event, between two scans
        await _finish_all(ledger)
        (tmp_path / "a.mkv").rename(paths[1])
        assert await intake.scan("interval") == 1
        assert len(await ledger.jobs_in([State.WAITING])) == 1
    finally:
        await ledger.close()
