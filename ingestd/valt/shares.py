"""Who a record is shared with: ``share`` names turned into the numeric ids Valt takes.

``share.users``/``share.groups`` take ids or names. Names are looked up in
``admin/users`` and ``admin/user_groups`` (valt-api.md): at start-up and by
``ingestd check`` for the names in the configuration, so that a typo is one
line naming the key instead of a record silently shared with nobody; and on
first need for names that only sidecars use. Nothing is listed unless some
name is used, because an ordinary account may not list users or groups: such
an account works with ids, and is asked for them when it uses names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ingestd.config.schema import RecordConfig
from ingestd.errors import AuthFailed, ConfigError, RetryableError, ShareNameError
from ingestd.logs import get_logger
from ingestd.valt.client import ValtClient

log = get_logger("ingestd.valt.shares")

#: kind -> (one of them, the admin listing that holds them)
KINDS: Mapping[str, tuple[str, str]] = {
    "users": ("user", "users"),
    "groups": ("group", "user_groups"),
}
#: An unknown name lists the server again if its listing is older than this (new staff).
REFRESH_AFTER = 300.0
KNOWN_SHOWN = 12

Listing = dict[str, tuple[int, ...]]  # name -> ids (several: the name is ambiguous)


def configured_names(record: RecordConfig) -> list[tuple[str, str, str]]:
    """(dotted key, kind, name) for every name, not id, in ``record.share`` and the rules'."""
    shares = [("record.share", record.share)]
    shares += [
        (f"record.rules[{index}].share", rule.share)
        for index, rule in enumerate(record.rules)
        if rule.share is not None
    ]
    return [
        (f"{key}.{kind}", kind, item)
        for key, share in shares
        for kind in KINDS
        for item in getattr(share, kind)
        if isinstance(item, str)
    ]


class ShareDirectory:
    """Names -> ids as the server lists them; each listing fetched once, on first need."""

    def __init__(self, client: ValtClient | None, *, refresh_after: float = REFRESH_AFTER) -> None:
        self.client = client
        self.refresh_after = refresh_after
        self._listings: dict[str, Listing] = {}
        self._listed_at: dict[str, float] = {}
        self._forbidden: set[str] = set()
        self._lock = asyncio.Lock()

    def listings(self) -> dict[str, dict[str, int]]:
        """What has been listed so far: kind -> name -> id (ambiguous names left out)."""
        return {
            kind: {name: ids[0] for name, ids in listing.items() if len(ids) == 1}
            for kind, listing in self._listings.items()
        }

    async def ids(self, kind: str, items: Iterable[int | str]) -> list[int]:
        """Ids for ``items`` (ids pass through, names are looked up), without repeats.

        ShareNameError when a name is unknown, ambiguous, or cannot be looked up.
        """
        result: list[int] = []
        for item in items:
            number = item if isinstance(item, int) else await self.lookup(kind, item)
            if number not in result:
                result.append(number)
        return result

    async def lookup(self, kind: str, name: str) -> int:
        """The id of the user or group called ``name`` (exactly, else ignoring case)."""
        async with self._lock:
            listing = await self._listing(kind)
            ids = _find(listing, name)
            if not ids and time.monotonic() - self._listed_at[kind] >= self.refresh_after:
                listing = await self._listing(kind, refresh=True)
                ids = _find(listing, name)
        one = KINDS[kind][0]
        if not ids:
            raise ShareNameError(
                kind, f"unknown {one} {name!r} on the server (known: {_known(listing)})"
            )
        if len(ids) > 1:
            shown = ", ".join(map(str, ids))
            raise ShareNameError(
                kind, f"{len(ids)} {kind} are called {name!r} (ids {shown}): use the id"
            )
        return ids[0]

    async def check_config(self, record: RecordConfig) -> None:
        """Look up every name in the configuration; ConfigError names the first that fails."""
        for key, kind, name in configured_names(record):
            try:
                await self.lookup(kind, name)
            except ShareNameError as exc:
                raise ConfigError(key, str(exc)) from None

    async def _listing(self, kind: str, *, refresh: bool = False) -> Listing:
        if kind in self._forbidden:
            raise self._forbidden_error(kind)
        if kind in self._listings and not refresh:
            return self._listings[kind]
        if self.client is None:
            raise ShareNameError(kind, f"{kind} can only be named with a server to ask")
        items = await self.client.admin_list(KINDS[kind][1])
        if items is None:
            self._forbidden.add(kind)
            raise self._forbidden_error(kind)
        self._listings[kind] = _index(items)
        self._listed_at[kind] = time.monotonic()
        return self._listings[kind]

    def _forbidden_error(self, kind: str) -> ShareNameError:
        one, endpoint = KINDS[kind]
        account = self.client.username if self.client is not None else "this account"
        return ShareNameError(
            kind,
            f"the account {account!r} may not list {kind} (GET admin/{endpoint} was refused), "
            f"so {one} names cannot be turned into ids: write numeric {one} ids instead, "
            f"e.g. {kind}: [12]",
            forbidden=True,
        )


def _index(items: Sequence[Mapping[str, Any]]) -> Listing:
    """name -> ids from an admin listing; ``username`` counts as a name too where present."""
    listing: dict[str, list[int]] = {}
    for item in items:
        number = _as_id(item.get("id"))
        if number is None:
            continue
        for field in ("name", "username"):
            name = item.get(field)
            if isinstance(name, str) and name.strip():
                ids = listing.setdefault(name.strip(), [])
                if number not in ids:
                    ids.append(number)
    return {name: tuple(ids) for name, ids in listing.items()}


def _as_id(raw: object) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw)
    return None


def _find(listing: Listing, name: str) -> tuple[int, ...]:
    if name in listing:
        return listing[name]
    folded = name.casefold()
    ids = {number for key, found in listing.items() if key.casefold() == folded for number in found}
    return tuple(sorted(ids))


def _known(listing: Listing) -> str:
    names = sorted(listing, key=str.casefold)
    if not names:
        return "none"
    shown = ", ".join(names[:KNOWN_SHOWN])
    more = len(names) - KNOWN_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


async def resolve_share_names(
    client: ValtClient, record: RecordConfig
) -> Mapping[str, Mapping[str, int]]:
    """Check the configuration's names against the server; kind -> name -> id as listed.

    Lists only the kinds that some name needs (none: no admin call at all).
    ConfigError, naming the key, for an unknown name or an account that may not list.
    """
    directory = ShareDirectory(client)
    await directory.check_config(record)
    return directory.listings()


async def open_share_directory(client: ValtClient, record: RecordConfig) -> ShareDirectory:
    """The daemon's directory, with the configuration's names checked before workers start.

    An unknown name raises ConfigError (``run`` exits 2 naming the key). A
    server that cannot be asked right now (down, or refusing the credentials)
    does not stop the daemon: the names are looked up before the first upload
    that needs them, and a bad one then fails that job (``unknown_share_name``).
    """
    directory = ShareDirectory(client)
    if not configured_names(record):
        return directory
    try:
        await directory.check_config(record)
    except (RetryableError, AuthFailed) as exc:
        log.warning(
            "share.names_deferred",
            error=str(exc),
            detail="share names are looked up before the first upload that needs them",
        )
        return directory
    listed = directory.listings()
    log.info("share.names_resolved", **{kind: len(names) for kind, names in listed.items()})
    return directory
