"""``ingestd fake-valt``: its options, and running the fake server (loaded only then).

The options live here, not in ingestd/fake_valt/, so that building the parser
for any command does not import the server (and aiohttp with it).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

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


def command(args: argparse.Namespace) -> int:
    from ingestd.fake_valt.cli import run_from_args

    return run_from_args(args)
