"""The command line: argument parsing, exit codes, and the only place that prints errors.

Exit codes: 0 fine; 1 an environment or server problem, or work not done;
2 bad usage or bad configuration, always with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

from ingestd import __version__
from ingestd.config.credentials import config_path_from, resolve_password, resolve_status_token
from ingestd.config.load import load_config
from ingestd.config.schema import Config
from ingestd.errors import ConfigError, IngestdError, LedgerDamaged, LedgerError, UsageError
from ingestd.failpoints import load_failpoints
from ingestd.logs import configure_logging, redact_text, register_secret
from ingestd.units import parse_duration

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, the same as a configuration error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help="configuration file (default: $INGESTD_CONFIG, then /etc/ingestd/config.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ingestd", description="Upload finished recordings to a Valt server.")
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the daemon (or one pass with --once)")
    _add_config(run)
    run.add_argument("--once", action="store_true", help="upload what is there now, then exit")
    run.add_argument(
        "--max-wait",
        default="10m",
        help="with --once: how long to wait for unfinished files (default 10m)",
    )

    check = commands.add_parser("check", help="validate the config and reach the server")
    _add_config(check)
    check.add_argument(
        "--probe-upload",
        action="store_true",
        help="also send a tiny two-chunk test video, confirm it and delete it",
    )

    status = commands.add_parser("status", help="what the ledger holds")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    retry = commands.add_parser("retry", help="re-queue failed jobs")
    _add_config(retry)
    retry.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument(
        "--force", action="store_true", help="also upload files that never pass the finished checks"
    )

    export = commands.add_parser("export", help="CSV audit of uploaded files")
    _add_config(export)
    export.add_argument("--since", help="only files confirmed on or after this date (2026-11-28)")

    for name, text in (("pause", "stop taking new files"), ("resume", "take new files again")):
        _add_config(commands.add_parser(name, help=text))

    ledger = commands.add_parser("ledger", help="the ledger: check it, back it up, restore it")
    _add_config(ledger)
    actions = ledger.add_subparsers(
        dest="ledger_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    for name, text in (
        ("check", "integrity_check and the jobs per state (exit 1: damaged)"),
        ("backup", "make a backup now (safe while the daemon runs)"),
        ("restore", "put the newest good backup in place (the daemon must be stopped)"),
    ):
        action = actions.add_parser(name, help=text)
        # -c after the action too; SUPPRESS keeps a -c given before it.
        action.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "restore":
            action.add_argument(
                "--force", action="store_true", help="restore even if the ledger is sound"
            )

    fake = commands.add_parser("fake-valt", help="run the Valt test double")
    from ingestd.fake_valt.cli import add_arguments

    add_arguments(fake)

    commands.add_parser("demo", help="the whole loop on this machine, no server needed")
    return parser


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path_from(args.config, os.environ))


@contextlib.contextmanager
def _advice_names(config: Config) -> Iterator[None]:
    """A damaged ledger's advice names this configuration file in its restore command."""
    try:
        yield
    except LedgerDamaged as exc:
        exc.config_file = config.source
        raise


def cmd_run(args: argparse.Namespace) -> int:
    from ingestd.daemon.lifecycle import Daemon

    config = _load(args)
    password = resolve_password(config.valt, os.environ)
    register_secret(password)
    status_token = resolve_status_token(config.status, os.environ)
    register_secret(status_token)
    max_wait = parse_duration(args.max_wait, "--max-wait")
    load_failpoints()
    configure_logging(
        fmt=config.log.format,
        level=config.log.level,
        redact_paths=config.log.redact_paths,
        watch_roots=config.watch.paths,
    )
    daemon = Daemon(
        config,
        password,
        once=args.once,
        max_wait=max_wait,
        show_progress=sys.stderr.isatty(),
        status_token=status_token,
    )
    from ingestd.ledger.lock import LedgerLock

    # One daemon per ledger; the kernel drops the lock however the process ends.
    with _advice_names(config), LedgerLock(config.ledger.path):
        result = asyncio.run(daemon.run())
    if args.once and result.exit_code:
        if result.message:
            print(f"ingestd: {result.message}", file=sys.stderr)
        for job in result.not_done:
            why = job.fail_reason or job.wait_reason or job.state.value
            detail = f": {job.fail_detail}" if job.fail_detail and job.fail_reason else ""
            print(f"not done: {job.path} ({job.state.value}: {why}{detail})", file=sys.stderr)
    return result.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    from ingestd.commands.check import run_check

    config = _load(args)
    password = resolve_password(config.valt, os.environ)
    register_secret(password)
    token = resolve_status_token(config.status, os.environ) is not None
    configure_logging(fmt="json", level="error", stream=sys.stderr)
    check = run_check(config, password, print, probe=args.probe_upload, status_token=token)
    return asyncio.run(check)


def cmd_status(args: argparse.Namespace) -> int:
    from ingestd.commands.status import gather_status, render_status
    from ingestd.ledger.store import Ledger

    config = _load(args)
    path = config.ledger.path
    if not path.exists():
        print(f"no ledger yet at {path}: the daemon has not run")
        return EXIT_OK

    async def read() -> dict[str, object]:
        ledger = await Ledger.open(path, readonly=True)
        try:
            return await gather_status(ledger)
        finally:
            await ledger.close()

    with _advice_names(config):
        status = asyncio.run(read())
    print(json.dumps(status, indent=2) if args.json else render_status(status))
    return EXIT_OK


def _with_ledger(config: Config, action: Callable[..., object]) -> object:
    from ingestd.ledger.store import Ledger

    async def go() -> object:
        ledger = await Ledger.open(config.ledger.path)
        try:
            return await action(ledger)  # type: ignore[misc]
        finally:
            await ledger.close()

    with _advice_names(config):
        return asyncio.run(go())


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.jobs and not args.failed:
        raise UsageError("retry needs job ids or --failed (see `ingestd status`)")
    config = _load(args)
    ids = None if args.failed and not args.jobs else list(args.jobs)
    retried = _with_ledger(config, lambda ledger: ledger.retry(ids, force=args.force))
    assert isinstance(retried, list)
    print(
        f"re-queued {len(retried)} job(s)"
        + (f": {', '.join(map(str, retried))}" if retried else "")
    )
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from ingestd.commands.export import audit_csv, parse_since
    from ingestd.ledger.store import Ledger, State

    config = _load(args)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not config.ledger.path.exists():
        print(audit_csv([]), end="")
        return EXIT_OK

    async def read() -> str:
        ledger = await Ledger.open(config.ledger.path, readonly=True)
        try:
            return audit_csv(await ledger.jobs_in([State.DONE], order="done_at"), since)
        finally:
            await ledger.close()

    print(asyncio.run(read()), end="")
    return EXIT_OK


def cmd_pause(args: argparse.Namespace, paused: bool) -> int:
    config = _load(args)
    _with_ledger(config, lambda ledger: ledger.set_paused(paused))
    print("paused: no new files are taken" if paused else "resumed: new files are taken")
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    """``ingestd ledger (check | backup | restore)``: see backup.py."""
    from ingestd.ledger import backup

    config = _load(args)
    path = config.ledger.path
    if args.ledger_command == "check":
        report = backup.check_ledger(path)
        print("\n".join(report.lines()))
        if not report.ok:
            print(f"to recover: `ingestd ledger restore -c {config.source}` (the daemon stopped)")
        return EXIT_OK if report.ok else EXIT_PROBLEM
    if args.ledger_command == "backup":
        made = backup.make_backup(path, config.ledger.backups)
        print(f"backup written: {made} (the newest {config.ledger.backups} are kept)")
        return EXIT_OK
    done = backup.restore(path, force=args.force)
    for skipped, problem in done.skipped:
        print(f"skipped {skipped.name}: fails integrity_check ({problem})")
    taken = backup.backup_stamp(done.backup_taken_at)
    print(f"restored {path} from {done.restored_from.name} (taken {taken} UTC)")
    if done.kept_aside is not None:
        print(f"the previous ledger is kept as {done.kept_aside}")
    print(
        "the next start checks every file not done in this backup against the server "
        "before uploading it"
    )
    return EXIT_OK


def cmd_fake_valt(args: argparse.Namespace) -> int:
    from ingestd.fake_valt.cli import run_from_args

    return run_from_args(args)


def cmd_demo(_args: argparse.Namespace) -> int:
    from ingestd.commands.demo import run_demo

    return run_demo()


def dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "run":
        return cmd_run(args)
    if command == "check":
        return cmd_check(args)
    if command == "status":
        return cmd_status(args)
    if command == "retry":
        return cmd_retry(args)
    if command == "export":
        return cmd_export(args)
    if command in ("pause", "resume"):
        return cmd_pause(args, command == "pause")
    if command == "ledger":
        return cmd_ledger(args)
    if command == "fake-valt":
        return cmd_fake_valt(args)
    return cmd_demo(args)


def _unexpected(exc: Exception) -> None:
    """An error nobody planned for: one scrubbed line; the traceback, scrubbed, at debug level."""
    text = redact_text(" ".join(str(exc).split()))[:500]
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)  # log.level: debug, once configured
    hint = "" if debug else " (log.level: debug shows where)"
    print(f"ingestd: unexpected error: {type(exc).__name__}: {text}{hint}", file=sys.stderr)
    if debug:
        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: run the command, turn every expected error into one line and an exit code."""
    try:
        args = build_parser().parse_args(argv)
        code = dispatch(args)
    except ConfigError as exc:
        print(f"ingestd: configuration error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except UsageError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except LedgerError as exc:
        print(f"ingestd: ledger error: {exc}", file=sys.stderr)
        code = EXIT_PROBLEM
    except IngestdError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        code = EXIT_PROBLEM
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug: one line, never a raw traceback that may quote a secret
        _unexpected(exc)
        code = EXIT_PROBLEM
    sys.stdout.flush()
    sys.exit(code)
