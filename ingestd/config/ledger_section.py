"""The ledger: section: a SQLite file (``path``) or a PostgreSQL ledger shared by several
daemons (``url``, ``password_file``, ``node``, ``lease``), and the check that a shared ledger
puts on ``watch.paths``.

A ledger URL is never echoed in a message, in whole or in part: its user info or query
string may hold a password.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from pathlib import Path

from ingestd.config.schema import LedgerConfig, WatchConfig
from ingestd.config.values import (
    Parse,
    duration,
    join_key,
    optional,
    path_parser,
    section,
    whole_number,
)
from ingestd.errors import ConfigError
from ingestd.units import describe, format_duration, parse_duration

__all__ = ["LEASE_MAX", "LEASE_MIN", "check_ledger_url", "check_shared_watch", "parse_ledger"]

URL_EXAMPLE = "postgresql://ingestd@db.example.org/ingestd"
_SCHEMES = ("postgresql://", "postgres://")  # what libpq takes as a URI, case and all
_NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NODE_RULE = "1 to 64 letters, digits, '.', '_' or '-'"
# Shorter, and one slow database round trip loses a claim; longer, and the jobs of a node
# that died wait that long for another one.
LEASE_MIN, LEASE_MAX = 5.0, 3600.0


def _carries_password(url: str) -> bool:
    """``user:secret@`` before the host(s), or ``password=`` in the query string.

    The user info is split at the last ``@`` of the part before the first ``/`` or ``?``:
    a ``:`` there is a password both where libpq reads up to the first ``@`` and where
    urllib reads up to the last.
    """
    rest = url.split("://", 1)[1]
    authority = re.split(r"[/?]", rest, maxsplit=1)[0]
    user_info, at, _hosts = authority.rpartition("@")
    if at and ":" in user_info:
        return True
    query = rest.partition("?")[2]
    fields = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return any(name.strip() == "password" for name, _value in fields)


def _ledger_url(value: object, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            key,
            f"must be a URL like {URL_EXAMPLE}, or null for the SQLite ledger at ledger.path"
            f" (got {describe(value)})",
        )
    text = value.strip()
    if not text.startswith(_SCHEMES):
        raise ConfigError(
            key,
            f"must start with postgresql:// or postgres://, like {URL_EXAMPLE} (value not shown)",
        )
    if _carries_password(text):
        raise ConfigError(
            key,
            "must not carry a password (value not shown); put it in ledger.password_file,"
            " the systemd credential ledger-password, or libpq's PGPASSFILE",
        )
    return text


def check_ledger_url(value: str, key: str) -> str:
    """A shared ledger's URL given elsewhere than ``ledger.url`` (``ledger copy --to``),
    held to the same rules: :class:`ConfigError` under ``key``, the value never shown."""
    url = _ledger_url(value, key)
    assert url is not None
    return url


def _node(value: object, key: str) -> str | None:
    """A node name as given; None (null) means the host name."""
    if value is None or (isinstance(value, str) and _NODE_RE.fullmatch(value)):
        return value
    raise ConfigError(key, f"must be {_NODE_RULE} (got {describe(value)})")


def _lease(value: object, key: str) -> float:
    seconds = parse_duration(value, key)
    if not LEASE_MIN <= seconds <= LEASE_MAX:
        raise ConfigError(
            key,
            f"must be from {format_duration(LEASE_MIN)} to {format_duration(LEASE_MAX)}"
            f" (got {describe(value)}): shorter, and one slow database answer loses a claim;"
            " longer, and a stopped node's jobs wait that long",
        )
    return seconds


def _default_node(key: str, *, shared: bool) -> str:
    """The host name; in a shared ledger it must make a valid node name."""
    host = socket.gethostname()
    if shared and not _NODE_RE.fullmatch(host):
        raise ConfigError(
            key,
            f"is not set, and the host name {describe(host)} is not a valid node name"
            f" ({_NODE_RULE}); set ledger.node",
        )
    return host


def parse_ledger(value: object, key: str, base: Path) -> LedgerConfig:
    parsers: dict[str, Parse] = {
        "path": path_parser(base),
        "backups": whole_number(0),
        "forget_after": optional(duration(0.0, above=True)),
        "url": _ledger_url,
        "password_file": optional(path_parser(base)),
        "node": _node,
        "lease": _lease,
    }
    fields = section(value, key, parsers)
    shared = fields.get("url") is not None
    if shared and "path" in fields:  # the default path is SQLite's only when url is absent
        raise ConfigError(
            join_key(key, "url"),
            f"cannot be set together with {key}.path: the ledger is either SQLite at"
            f" {key}.path or PostgreSQL at {key}.url; remove one of them",
        )
    if fields.get("node") is None:
        fields["node"] = _default_node(join_key(key, "node"), shared=shared)
    return LedgerConfig(**fields)


def check_shared_watch(ledger: LedgerConfig, watch: WatchConfig) -> None:
    """In a shared ledger a job is (folder name, path below it): every folder needs a name."""
    if not ledger.shared:
        return
    for index in range(len(watch.paths)):
        if index >= len(watch.names) or watch.names[index] is None:
            raise ConfigError(
                f"watch.paths[{index}].name",
                "is required with ledger.url: hosts that mount the share at different paths"
                " agree on its files by this name; write the entry as"
                " {path: /mnt/export, name: export}",
            )
