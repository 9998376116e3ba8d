"""Accounts and access tokens of the fake server.

Valt publishes no token lifetime; the fake can expire a token after a number
of uses (``token_ttl``) so that the client's log-in-again-on-401 path runs.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass


class TokenCheck(enum.Enum):
    """The outcome of presenting a token."""

    OK = enum.auto()
    MISSING = enum.auto()
    BAD = enum.auto()
    EXPIRED = enum.auto()

    @property
    def message(self) -> str:
        """Valt's words for a refused token; it does not say "expired", so neither do we."""
        return "No API token provided" if self is TokenCheck.MISSING else "Bad credentials."


@dataclass
class _Token:
    username: str
    uses: int = 0


class Accounts:
    """Who may log in, and the tokens handed out."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self._tokens: dict[str, _Token] = {}
        self._expired: set[str] = set()
        self.logins = 0
        self.login_failures = 0

    def login(self, username: object, password: object) -> str | None:
        """A new token for correct credentials, else None."""
        if (
            isinstance(username, str)
            and isinstance(password, str)
            and username in self.users
            and secrets.compare_digest(self.users[username], password)
        ):
            token = secrets.token_hex(16)
            self._tokens[token] = _Token(username)
            self.logins += 1
            return token
        self.login_failures += 1
        return None

    def use(self, token: str | None, ttl: int | None) -> TokenCheck:
        """Check a token and count one use of it against ``ttl``."""
        if not token:
            return TokenCheck.MISSING
        if token in self._expired:
            return TokenCheck.EXPIRED
        entry = self._tokens.get(token)
        if entry is None:
            return TokenCheck.BAD
        if ttl is not None and entry.uses >= ttl:
            del self._tokens[token]
            self._expired.add(token)
            return TokenCheck.EXPIRED
        entry.uses += 1
        return TokenCheck.OK

    def username(self, token: str) -> str:
        """Whose token this is (the token must have passed :meth:`use`)."""
        entry = self._tokens.get(token)
        return entry.username if entry is not None else ""

    def issued_tokens(self) -> set[str]:
        """Every token handed out, live or expired: tests search output for leaks."""
        return set(self._tokens) | self._expired
