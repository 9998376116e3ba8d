"""Folder events watch each folder the scan read on its own (not the tree recursively, whose
watch walks and stats every file again holding the GIL): a new, removed or re-created
folder re-arms the watch after the scan that saw it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import intake_for_tests, random_file

from ingestd.intake.watcher import Intake
from ingestd.ledger.store import SqliteLedger

# Long enough that no interval rescan comes during a test: what is found, events find.
HOUR = "1h"
TIMEOUT = 15.0


async def _until(check: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Counted:
    """Counts the scans an intake makes (started and finished)."""

    def __init__(self, intake: Intake) -> None:
        self.started = self.finished = 0
        scan = intake.scanner.scan

        async def counted(why: str) -> int:
            self.started += 1
            try:
                return await scan(why)
            finally:
                self.finished += 1

        intake.scanner.scan = counted  # type: ignore[method-assign]


@asynccontextmanager
async def running(
    tmp_path: Path, *, rescans: bool = True, **watch: Any
) -> AsyncIterator[tuple[Intake, SqliteLedger, Counted]]:
    """An intake after its start-up scan, its events (and rescans) running."""
    intake, ledger = await intake_for_tests(tmp_path, rescan_interval=HOUR, **watch)
    counted = Counted(intake)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await intake.scan("startup")
        tasks.append(asyncio.create_task(intake.run_events(stop)))
        if rescans:
            tasks.append(asyncio.create_task(intake.run_rescans(stop)))
        await _found_by_event(ledger, counted, intake.roots[0])  # the watch is there
        yield intake, ledger, counted
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await ledger.close()


async def _discovered(ledger: SqliteLedger, path: Path, timeout: float = TIMEOUT) -> None:
    async def known() -> bool:
        return bool(await ledger.known_snapshots_for(str(path)))

    await _until(known, f"a job for {path.name}", timeout)


async def _found_by_event(ledger: SqliteLedger, counted: Counted, folder: Path) -> None:
    """A file written into ``folder`` is found with no scan meanwhile: by its event. Tried
    again with a new file while a scan comes between (the one after a new watch)."""
    for number in range(int(TIMEOUT)):
        scans = counted.started
        path = folder / f"probe{number}.mp4"
        random_file(path, 100, seed=number)
        try:
            await _discovered(ledger, path, timeout=2.0)
        except AssertionError:
            continue
        if counted.started == scans:
            return
    raise AssertionError(f"no file in {folder} was found by its event")


def _inotify_watches() -> int:
    """The inotify watches this process holds (Linux: one ``inotify wd:`` line each)."""
    count = 0
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += text.count("inotify wd:")
    return count


def _tree(export: Path) -> None:
    for room in ("room1", "room2", "room2/cam", ".hidden"):
        (export / room).mkdir(parents=True)
        random_file(export / room / "old.mp4", 100)
    (export / "empty").mkdir()


@pytest.mark.parametrize(
    ("watch", "folders"),
    [
        ({}, ["", "room1", "room2", "room2/cam", "empty"]),
        ({"follow_symlinks": True}, ["", "room1", "room2", "room2/cam", "empty", "link"]),
        ({"recursive": False}, [""]),
    ],
)
async def test_the_watch_is_the_folders_the_scan_read_one_watch_each(
    tmp_path: Path, export: Path, watch: dict[str, Any], folders: list[str]
) -> None:
    """Each folder the scan read (an empty one too), none it skipped (``.hidden`` is
    excluded, a symlink followed only with ``follow_symlinks``), and a watch each: the
    watch is made from the scan's folders, not by walking the tree (and its files) again."""
    _tree(export)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (export / "link").symlink_to(outside)
    expected = {str(export / sub) if sub else str(export) for sub in folders}
    async with running(tmp_path, rescans=False, **watch) as (intake, _ledger, _counted):
        assert intake.scanner.folders == expected
        assert intake.events.watched == expected
        if os.path.isdir("/proc/self/fdinfo"):
            assert _inotify_watches() == len(expected)


async def test_a_symlinked_folder_has_events_with_follow_symlinks(
    tmp_path: Path, export: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (export / "link").symlink_to(outside)
    async with running(tmp_path, follow_symlinks=True) as (_intake, ledger, counted):
        await _found_by_event(ledger, counted, export / "link")


@pytest.mark.parametrize("polling", [False, True])
async def test_a_file_in_an_existing_subfolder_is_found_by_its_event(
    tmp_path: Path, export: Path, polling: bool
) -> None:
    _tree(export)
    async with running(tmp_path, rescans=False, force_polling=polling) as (_i, ledger, counted):
        random_file(export / "room2" / "cam" / "new.mp4", 100)
        await _discovered(ledger, export / "room2" / "cam" / "new.mp4")
        assert counted.started == 1  # the start-up scan only


async def test_a_new_subfolder_has_events_after_the_scan_that_finds_it(
    tmp_path: Path, export: Path
) -> None:
    _tree(export)
    async with running(tmp_path) as (_intake, ledger, counted):
        new = export / "room3" / "day1"
        new.mkdir(parents=True)
        random_file(new / "first.mp4", 100)  # maybe before its watch: then a scan finds it
        await _discovered(ledger, new / "first.mp4")
        await _found_by_event(ledger, counted, new)


async def test_a_removed_folder_has_events_again_when_it_is_back(
    tmp_path: Path, export: Path
) -> None:
    _tree(export)
    room = export / "room2"
    async with running(tmp_path) as (_intake, ledger, counted):
        shutil.rmtree(room)
        await asyncio.sleep(1.0)  # its events (debounced 0.4 s) come first
        room.mkdir()
        await _found_by_event(ledger, counted, room)


async def test_a_folder_replaced_at_once_has_events(tmp_path: Path, export: Path) -> None:
    """Removed and made again before any scan: the same path, a new folder, whose events
    the watch of the old one does not see."""
    _tree(export)
    room = export / "room1"
    async with running(tmp_path) as (_intake, ledger, counted):
        shutil.rmtree(room)
        room.mkdir()
        await _found_by_event(ledger, counted, room)
