"""``ingestd check``: line by line, what is fine and what is not, for the admin setting up.

Exit 0 only when every line is fine; 1 when the environment or the server is
the problem (a bad configuration never gets this far: the CLI exits 2).
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable
from pathlib import Path

from ingestd.config import Config
from ingestd.errors import AuthFailed, ValtError
from ingestd.logs import redact_url
from ingestd.valt import ValtClient

Out = Callable[[str], None]
CLOCK_TOLERANCE = 60.0


class _Report:
    def __init__(self, out: Out) -> None:
        self.out = out
        self.problems = 0

    def ok(self, text: str) -> None:
        self.out(f"ok    {text}")

    def fail(self, text: str) -> None:
        self.problems += 1
        self.out(f"FAIL  {text}")


def _check_folders(config: Config, report: _Report) -> None:
    needs_write = config.after_upload.action in ("move", "delete")
    for folder in config.watch.paths:
        if not folder.is_dir():
            report.fail(f"watch folder {folder} does not exist (watch.paths)")
        elif not os.access(folder, os.R_OK | os.X_OK):
            report.fail(f"watch folder {folder} is not readable by this user")
        elif needs_write and not os.access(folder, os.W_OK):
            report.fail(f"watch folder {folder} is not writable (after_upload.action needs it)")
        else:
            report.ok(f"watch folder {folder}")
    ledger_dir = _existing_parent(config.ledger.path)
    if os.access(ledger_dir, os.W_OK):
        report.ok(f"ledger folder {config.ledger.path.parent} is writable")
    else:
        report.fail(f"ledger folder {config.ledger.path.parent} is not writable (ledger.path)")


def _existing_parent(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _clock_line(date_header: str | None, report: _Report) -> None:
    if not date_header:
        return
    try:
        server_time = email.utils.parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return
    skew = server_time - time.time()
    if abs(skew) > CLOCK_TOLERANCE:
        report.fail(f"the server's clock differs from ours by {skew:+.0f} s (fix NTP on one side)")
    else:
        report.ok(f"server clock within {abs(skew):.0f} s of ours")


async def _check_server(config: Config, password: str, report: _Report) -> None:
    where = redact_url(config.valt.url)
    async with ValtClient(
        base_url=config.valt.url,
        username=config.valt.username,
        password=password,
        timeout=config.valt.timeout,
        verify_tls=config.valt.verify_tls,
        ca_file=config.valt.ca_file,
    ) as client:
        try:
            await client.login()
        except AuthFailed:
            report.fail(
                f"credentials: {where} refused user {config.valt.username!r} "
                "(check valt.username and the password)"
            )
            return
        except ValtError as exc:
            report.fail(f"server {where} cannot be reached: {exc}")
            return
        report.ok(f"server {where} reachable, logged in as {config.valt.username!r}")
        try:
            version, date_header = await client.server_version()
        except ValtError as exc:
            report.fail(f"server version: {exc}")
            return
        report.ok(f"server version {version}")
        _clock_line(date_header, report)


async def run_check(config: Config, password: str, out: Out) -> int:
    report = _Report(out)
    report.ok(f"configuration {config.source or ''} is valid".replace("  ", " "))
    if not config.valt.verify_tls:
        report.fail("valt.verify_tls is false: the server's identity is not checked")
    _check_folders(config, report)
    await _check_server(config, password, report)
    return 1 if report.problems else 0
