"""The command line: argument parsing, dispatch, and the only place that prints errors.

Each subcommand is a module of its own here (run, check, status, ...), imported
only when it runs, so that ``ingestd status`` does not load the daemon.

Exit codes: 0 fine; 1 an environment or server problem, or work not done;
2 bad usage or bad configuration, always with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ingestd import __version__
from ingestd.commands import fake_valt
from ingestd.commands.exits import EXIT_PROBLEM, EXIT_USAGE
from ingestd.errors import ConfigError, IngestdError, LedgerError, UsageError
from ingestd.logs import redact_text


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

    status = commands.add_parser("status", help="whether the daemon runs; what the ledger holds")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--all", action="store_true", help="list every job (default: 20 per group)")

    plan = commands.add_parser(
        "plan", help="dry run: what each file present would get; nothing is uploaded"
    )
    _add_config(plan)
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    retry = commands.add_parser("retry", help="re-queue failed jobs")
    _add_config(retry)
    retry.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument(
        "--force", action="store_true", help="also upload files that never pass the finished checks"
    )
    retry.add_argument(
        "--node", metavar="NAME", help="a shared ledger: the failed jobs this node held last"
    )

    export = commands.add_parser("export", help="CSV audit of uploaded files")
    _add_config(export)
    export.add_argument("--since", help="only files confirmed on or after this date (2026-11-28)")

    for name, text in (("pause", "stop taking new files"), ("resume", "take new files again")):
        flag = commands.add_parser(name, help=text)
        _add_config(flag)
        flag.add_argument(
            "--node", metavar="NAME", help=f"a shared ledger: {name} this node only (default: all)"
        )

    ledger = commands.add_parser("ledger", help="the ledger: check it, back it up, restore it")
    _add_config(ledger)
    actions = ledger.add_subparsers(
        dest="ledger_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    for name, text in (
        ("check", "integrity_check and the jobs per state (exit 1: damaged)"),
        ("backup", "make a backup now (safe while the daemon runs)"),
        ("restore", "put the newest good backup in place (the daemon must be stopped)"),
        ("migrate", "create or upgrade a shared ledger's tables (ledger.url)"),
        ("forget-node", "drop a gone node from a shared ledger's list, giving its claims back"),
        ("copy", "copy this SQLite ledger into a shared one (--to URL), then mark it moved"),
    ):
        action = actions.add_parser(name, help=text)
        # -c after the action too; SUPPRESS keeps a -c given before it.
        action.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if name == "forget-node":
            action.add_argument("name", metavar="NAME", help="the node's name (ledger.node)")
        if name == "restore":
            action.add_argument(
                "--force", action="store_true", help="restore even if the ledger is sound"
            )
        if name == "copy":
            action.add_argument(
                "--to",
                required=True,
                metavar="URL",
                help="the shared ledger, postgresql://USER@HOST/DB (no password in it)",
            )

    fake_valt.add_arguments(commands.add_parser("fake-valt", help="run the Valt test double"))

    init = commands.add_parser("init", help="write a commented starting config, or print the unit")
    init.add_argument(
        "-c",
        "--config",
        help="where to write it (default: $INGESTD_CONFIG, then /etc/ingestd/config.yaml)",
    )
    init.add_argument("--url", help="the Valt server's address (valt.url)")
    init.add_argument("--username", help="the account that uploads (valt.username)")
    init.add_argument(
        "--watch",
        action="append",
        metavar="PATH",
        help="a folder to upload from (watch.paths); give it again for more",
    )
    init.add_argument("--unit", action="store_true", help="print the systemd unit file instead")

    commands.add_parser("demo", help="the whole loop on this machine, no server needed")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand; each module is imported only when its command runs."""
    command: str = args.command
    if command == "run":
        from ingestd.commands import run

        return run.command(args)
    if command == "check":
        from ingestd.commands import check

        return check.command(args)
    if command == "status":
        from ingestd.commands import status

        return status.command(args)
    if command == "plan":
        from ingestd.commands import plan

        return plan.command(args)
    if command == "retry":
        from ingestd.commands import retry

        return retry.command(args)
    if command == "export":
        from ingestd.commands import export

        return export.command(args)
    if command in ("pause", "resume"):
        from ingestd.commands import pause

        return pause.command(args, command == "pause")
    if command == "ledger":
        from ingestd.commands import ledger

        return ledger.command(args)
    if command == "fake-valt":
        return fake_valt.command(args)
    if command == "init":
        from ingestd.commands import init

        return init.command(args)
    from ingestd.commands import demo

    return demo.command(args)


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
