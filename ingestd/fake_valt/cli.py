"""``ingestd fake-valt``: running the fake server by hand.

The options are declared in ingestd/commands/fake_valt.py, so that the
command line's parser does not load the server; :func:`run_from_args` runs
it. The one stdout line ``fake-valt listening on URL`` is an interface: a
parent process started with ``--port 0`` reads the port there.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

from ingestd.fake_valt.faults import Faults
from ingestd.fake_valt.server import FakeValt


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
