"""``ingestd fake-valt``: argument wiring for running the fake server by hand.

The main CLI owns the parser and calls :func:`add_arguments` and
:func:`run_from_args`. The one stdout line ``fake-valt listening on URL`` is
an interface: a parent process started with ``--port 0`` reads the port there.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import sys
from pathlib import Path

from ingestd.fake_valt.faults import Faults
from ingestd.fake_valt.server import FakeValt

_SIZE = re.compile(r"(\d+)\s*([KMG]i?B|B)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3})


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {text})")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative (got {text})")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return int(text)


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"must be a size like 1048576 or 8MiB (got {text!r})")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


def _user(text: str) -> tuple[str, str]:
    name, colon, password = text.partition(":")
    if not name or not colon:
        raise argparse.ArgumentTypeError(f"must be NAME:PASSWORD (got {text!r})")
    return name, password


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fake server's options to ``parser``."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    add("--data", type=Path, metavar="DIR", help="keep uploaded bytes here (default: a temp dir)")
    add(
        "--user",
        type=_user,
        action="append",
        metavar="NAME:PASSWORD",
        help="an account that may log in; repeatable (default ingest:secret)",
    )
    add("--discard", action="store_true", help="count and hash uploaded bytes, store nothing")
    add("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    add("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    faults = parser.add_argument_group("faults")
    opt = faults.add_argument
    opt("--fail-rate", type=_rate, default=0.0, help="fraction of calls answered 500")
    opt("--bad-gateway-rate", type=_rate, default=0.0, help="fraction answered 502 (nginx)")
    opt("--drop-rate", type=_rate, default=0.0, help="fraction of uploads cut off mid-body")
    opt("--slow-rate", type=_rate, default=0.0, help="fraction of calls delayed --slow-seconds")
    opt("--slow-seconds", type=_seconds, default=0.0, help="delay of a slow call")
    opt("--hang-rate", type=_rate, default=0.0, help="fraction of calls never answered")
    opt("--token-ttl", type=_positive_int, metavar="N", help="tokens expire after N calls")
    opt("--ready-delay", type=_seconds, default=0.0, metavar="SECONDS", help="upload -> ready")
    opt("--not-json-rate", type=_rate, default=0.0, help="fraction answered 200 'OK' text")
    opt("--max-body", type=_size, metavar="BYTES", help="larger bodies get 413 (nginx)")
    opt("--no-chunking", action="store_true", help="act as a server that cannot take chunks")
    opt("--admin-forbidden", action="store_true", help="admin/* listings answer 403")
    opt("--quote-url", action="store_true", help="error answers quote the full request URL")
    opt("--strict-search", action="store_true", help="search results carry no videos or author")
    opt("--omit-nulls", action="store_true", help="GET records/{id} leaves out null fields")
    opt("--redirect-to", metavar="URL", help="answer every call 307 to this origin")
    opt("--seed", type=int, default=0, metavar="N", help="random seed, to replay faults")


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The fault switches the options ask for."""
    return Faults(
        fail_rate=args.fail_rate,
        bad_gateway_rate=args.bad_gateway_rate,
        drop_rate=args.drop_rate,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds,
        hang_rate=args.hang_rate,
        token_ttl=args.token_ttl,
        ready_delay=args.ready_delay,
        not_json_rate=args.not_json_rate,
        max_body=args.max_body,
        no_chunking=args.no_chunking,
        admin_forbidden=args.admin_forbidden,
        quote_url=args.quote_url,
        strict_search=args.strict_search,
        omit_nulls=args.omit_nulls,
        redirect_to=args.redirect_to,
        seed=args.seed,
    )


def tls_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server-side TLS context ``--tls-cert``/``--tls-key`` ask for (None: plain HTTP)."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 1 if it cannot listen or load TLS."""
    try:
        ssl_context = tls_from_args(args)
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"fake-valt: TLS: {exc}", file=sys.stderr)
        return 1
    fake = FakeValt(
        args.data,
        users=dict(args.user) if args.user else None,
        faults=faults_from_args(args),
        keep_bytes=not args.discard,
    )
    return asyncio.run(_serve(fake, args.host, args.port, ssl_context))


async def _serve(
    fake: FakeValt, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await fake.start(host, port, ssl_context=ssl_context)
        except OSError as exc:
            print(f"fake-valt: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"fake-valt listening on {fake.url}", flush=True)
        if fake.state.store.keep_bytes:
            print(f"fake-valt: uploads kept in {fake.data_dir}", file=sys.stderr, flush=True)
        await stop.wait()
        await fake.stop()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
