"""``ingestd check``: line by line, what is fine and what is not, for the admin setting up.

Exit 0 only when every line is fine; 1 when the environment or the server is
the problem (a bad configuration never gets this far: the CLI exits 2).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ingestd.commands.check_places import (
    check_after_upload_folders,
    check_ledger_folder,
    check_status_port,
    read_only,
)
from ingestd.commands.common import load
from ingestd.commands.probe import probe_upload
from ingestd.config.credentials import resolve_password, resolve_status_token
from ingestd.config.network import CLEARTEXT_DETAIL, cleartext_password, is_loopback
from ingestd.config.schema import Config, RecordConfig
from ingestd.errors import AuthFailed, Redirected, ShareNameError, ValtError
from ingestd.ledger.shared_check import SharedLedger, check_shared_ledger
from ingestd.logs import configure_logging, redact_url, register_secret
from ingestd.units import format_size
from ingestd.valt.client import ValtClient
from ingestd.valt.connect import client_for
from ingestd.valt.shares import KINDS, ShareDirectory, configured_names

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

    def say(self, ok: bool, text: str) -> None:
        (self.ok if ok else self.fail)(text)

    def warn(self, text: str) -> None:
        """Worth fixing, but nothing fails because of it: the exit code stays."""
        self.out(f"warn  {text}")

    def skip(self, text: str) -> None:
        """Something that could not be checked, and need not be: not a problem."""
        self.out(f"skip  {text}")


def _check_folders(config: Config, report: _Report, shared: SharedLedger | None) -> None:
    needs_write = config.after_upload.action in ("move", "delete")
    for folder in config.watch.paths:
        if not folder.is_dir():
            report.fail(f"watch folder {folder} does not exist (watch.paths)")
        elif not os.access(folder, os.R_OK | os.X_OK):
            report.fail(f"watch folder {folder} is not readable by this user")
        elif needs_write and (not os.access(folder, os.W_OK) or read_only(folder)):
            why = "is on a read-only file system" if read_only(folder) else "is not writable"
            report.fail(f"watch folder {folder} {why} (after_upload.action needs to write it)")
        else:
            report.ok(f"watch folder {folder}")
            _free_space_line(folder, config.watch.min_free, report)
    if config.ledger.shared and config.watch.check_open_writers:
        # /proc shows this machine's processes only; the share is written from others too.
        report.warn(
            "the open-writer check sees only this host's processes: writers on other hosts"
            " are caught by the settle time, the container check and marker files"
        )
    if shared is None:
        check_ledger_folder(config, report.say)
    else:  # ledger.path is not used: the ledger is PostgreSQL's
        report.say(shared.ok, shared.line)
    check_after_upload_folders(config, report.say)
    check_status_port(config, report.say, node_daemon=shared.daemon if shared else None)


def _free_space_line(folder: Path, min_free: int, report: _Report) -> None:
    try:
        stats = os.statvfs(folder)
    except OSError as exc:
        report.fail(f"free space of {folder} cannot be read ({exc.strerror})")
        return
    free = stats.f_bavail * stats.f_frsize
    if free < min_free:
        report.fail(
            f"only {format_size(free)} free on the volume of {folder} "
            f"(watch.min_free is {format_size(min_free)}): the capture disk is filling up"
        )
    else:
        report.ok(f"{format_size(free)} free on the volume of {folder}")


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


async def _check_server(
    config: Config, password: str, report: _Report, *, probe: bool = False
) -> None:
    where = redact_url(config.valt.url)
    async with client_for(config.valt, password) as client:
        try:
            await client.login()
        except Redirected as exc:
            report.fail(f"server: {exc}")
            return
        except AuthFailed:
            report.fail(
                f"credentials: {where} refused user {config.valt.username!r} "
                "(check valt.username and the password)"
            )
            return
        except ValtError as exc:
            # An HTTP answer means the server was reached; its message says what it was.
            reached = exc.status is not None
            report.fail(
                f"server {where}: {exc}" if reached else f"server {where} cannot be reached: {exc}"
            )
            return
        report.ok(f"server {where} reachable, logged in as {config.valt.username!r}")
        try:
            version, date_header = await client.server_version()
        except ValtError as exc:
            report.fail(f"server version: {exc}")
            return
        report.ok(f"server version {version}")
        _clock_line(date_header, report)
        await _check_share_names(config.record, client, report)
        if config.record.template_id is not None:
            await _check_template(config.record, config.record.template_id, client, report)
        if probe:
            await probe_upload(client, report.say, chunked=config.upload.chunk_size != 0)


async def _check_share_names(record: RecordConfig, client: ValtClient, report: _Report) -> None:
    """Every name in ``share`` must be one user or group on the server (ids are not
    looked up: an account that may not list them works with ids)."""
    names = configured_names(record)
    if not names:
        return
    directory = ShareDirectory(client)
    found: list[str] = []
    failed_before = report.problems
    refused: set[str] = set()
    for key, kind, name in names:
        if kind in refused:
            continue
        try:
            number = await directory.lookup(kind, name)
        except ShareNameError as exc:
            if exc.forbidden:
                refused.add(kind)
            report.fail(f"{key}: {exc}")
            continue
        except ValtError as exc:
            report.fail(f"share names cannot be looked up: {exc}")
            return
        found.append(f"{KINDS[kind][0]} {name!r} = {number}")
    if found and report.problems == failed_before:
        report.ok(f"share names found on the server: {', '.join(found)}")


async def _check_template(
    record: RecordConfig, template_id: int, client: ValtClient, report: _Report
) -> None:
    """``record.template`` (and each rule's) against ``admin/templates/{template_id}``:
    field ids that exist, and every required field set."""
    try:
        data = await client.get_template(template_id)
    except ValtError as exc:
        if exc.status == 404:
            report.fail(f"record.template_id: there is no template {template_id} on the server")
        else:
            report.fail(f"record.template_id: template {template_id} cannot be read: {exc}")
        return
    if data is None:
        report.skip(
            f"record.template_id: template {template_id} not checked: the account "
            f"{client.username!r} may not read admin/templates"
        )
        return
    fields = _template_fields(data)
    title = f"template {template_id} {str(data.get('name', ''))!r}"
    listing = ", ".join(f"{fid} {name!r}" for fid, (name, _required) in fields.items())
    failed_before = report.problems
    for key, values in _record_templates(record):
        for field_id in values:
            if field_id not in fields:
                report.fail(f"{key}.{field_id}: {title} has no field {field_id} ({listing})")
        for field_id, (name, required) in fields.items():
            if required and not values.get(field_id, "").strip():
                report.fail(
                    f"{key}: required field {field_id} {name!r} of {title} is not set"
                    " (a sidecar may set it, but every file needs it)"
                )
    if report.problems == failed_before:
        report.ok(f"record.template fits {title}: fields exist, required fields set")


def _template_fields(data: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """field id (as the config writes it) -> (name, required), from the server's answer."""
    fields: dict[str, tuple[str, bool]] = {}
    raw = data.get("fields")
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, Mapping) and item.get("id") is not None:
            field_id = str(item["id"]).strip()
            field_id = str(int(field_id)) if field_id.isdigit() else field_id
            fields[field_id] = (str(item.get("name", "")), bool(item.get("required")))
    return fields


def _record_templates(record: RecordConfig) -> Iterator[tuple[str, Mapping[str, str]]]:
    """Each template a file can get: the default, and every rule's own (it replaces it)."""
    yield "record.template", record.template
    for index, rule in enumerate(record.rules):
        if rule.template is not None:
            yield f"record.rules[{index}].template", rule.template


def _exposure_warnings(config: Config, report: _Report, *, status_token: bool) -> None:
    """What a listener on the network could take: the password, or the status pages."""
    if cleartext_password(config.valt):
        report.warn(CLEARTEXT_DETAIL)
    listen = config.status.listen
    if listen is not None and not is_loopback(listen[0]) and not status_token:
        report.warn(
            f"status.listen is {listen[0]}:{listen[1]}, reachable from the network, and no"
            " token is set: set status.token_file (or the credential status-token)"
        )


async def run_check(
    config: Config, password: str, out: Out, *, probe: bool = False, status_token: bool = False
) -> int:
    """``status_token``: whether the status port has a token (its value is not needed)."""
    report = _Report(out)
    report.ok(f"configuration {config.source or ''} is valid".replace("  ", " "))
    if not config.valt.verify_tls:
        report.fail("valt.verify_tls is false: the server's identity is not checked")
    _exposure_warnings(config, report, status_token=status_token)
    shared = await check_shared_ledger(config) if config.ledger.shared else None
    _check_folders(config, report, shared)
    await _check_server(config, password, report, probe=probe)
    return 1 if report.problems else 0


def command(args: argparse.Namespace) -> int:
    config = load(args)
    password = resolve_password(config.valt, os.environ)
    register_secret(password)
    token = resolve_status_token(config.status, os.environ) is not None
    # Every problem is a line of the table; a log line would land in the middle of it.
    configure_logging(fmt="json", level="critical", stream=sys.stderr)
    check = run_check(config, password, print, probe=args.probe_upload, status_token=token)
    return asyncio.run(check)
