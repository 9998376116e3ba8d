"""Fault switches for the fake Valt server, and the seeded dice that decide them.

A chaos test is only useful if a failure can be replayed: every random
decision comes from one ``random.Random(seed)``, drawn in a fixed order per
request, so the same seed and the same request sequence give the same faults.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RATE_FIELDS = (
    "fail_rate",
    "bad_gateway_rate",
    "drop_rate",
    "slow_rate",
    "hang_rate",
    "not_json_rate",
)
"""Fractions of requests (0.0 to 1.0) that get one kind of fault."""


@dataclass
class Faults:
    """What the fake server does wrong, on purpose.

    Mutable so that a test can flip a switch between two requests; use
    :meth:`updated` (or ``FakeValt.set_faults``) to change several values
    with validation.
    """

    fail_rate: float = 0.0
    bad_gateway_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    hang_rate: float = 0.0
    token_ttl: int | None = None
    ready_delay: float = 0.0
    not_json_rate: float = 0.0
    max_body: int | None = None
    no_chunking: bool = False
    admin_forbidden: bool = False
    refuse_names: tuple[str, ...] = ()
    """Record names that create-upload refuses with a 400 (a permanent error)."""
    fail_names: tuple[str, ...] = ()
    """Record names whose create-upload is answered 500 while every other call is served:
    one file's trouble, not an outage."""
    fail_calls: tuple[str, ...] = ()
    """Calls answered 500 while every other is served, as ``METHOD /route``: e.g.
    ``POST /api/v3/records/{record_id}/delete``."""
    quote_url: bool = False
    """Every error answer says ``No route for METHOD <full URL>``, query string (the
    token) and all; ``login``'s also quotes the request body (the password)."""
    strict_search: bool = False
    """Search results carry only id, name and created: no videos, no author (the
    record search is not documented to return them)."""
    omit_nulls: bool = False
    """``GET records/{id}`` leaves out null fields: an empty record shows no ``videos``."""
    redirect_to: str | None = None
    """Every API call is answered ``307`` to this origin (path and a query string kept)."""
    seed: int | None = 0

    def __post_init__(self) -> None:
        for name in RATE_FIELDS:
            value = _number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (got {value})")
            setattr(self, name, value)
        for name in ("slow_seconds", "ready_delay"):
            value = _number(name, getattr(self, name))
            if value < 0:
                raise ValueError(f"{name} must not be negative (got {value})")
            setattr(self, name, value)
        self.token_ttl = _optional_int("token_ttl", self.token_ttl, minimum=1)
        self.max_body = _optional_int("max_body", self.max_body, minimum=0)
        self.seed = _optional_int("seed", self.seed, minimum=None)
        if self.redirect_to is not None and not isinstance(self.redirect_to, str):
            raise ValueError(f"redirect_to must be a URL or null (got {self.redirect_to!r})")
        for name in ("no_chunking", "admin_forbidden", "quote_url", "strict_search", "omit_nulls"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false (got {getattr(self, name)!r})")
        for name in ("refuse_names", "fail_names", "fail_calls"):
            names: object = getattr(self, name)
            if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"{name} must be a list of strings (got {names!r})")
            setattr(self, name, tuple(names))

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A validated copy with ``changes`` merged in; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-able form, as ``/_fake/state`` and ``/_fake/faults`` show it."""
        return dataclasses.asdict(self)


def _number(name: str, value: object) -> float:
    # bool is an int subclass: "fail_rate": true is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number (got {value!r})")
    return float(value)


def _optional_int(name: str, value: object, *, minimum: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer or null (got {value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum} (got {value})")
    return value


@dataclass(frozen=True)
class FaultPlan:
    """The faults chosen for one request, decided before it is processed."""

    slow: bool = False
    hang: bool = False
    drop: bool = False
    fail: bool = False
    fail_html: bool = False
    bad_gateway: bool = False
    not_json: bool = False


@dataclass
class FaultDice:
    """The seeded random source and the count of faults injected, by kind."""

    seed: int | None = 0
    injected: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int | None) -> None:
        """Start the random sequence again, so a run can be replayed from here."""
        self.seed = seed
        self._rng = random.Random(seed)

    def count(self, kind: str) -> None:
        """Remember that one fault of ``kind`` was injected."""
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def roll(self, rate: float) -> bool:
        """True for a ``rate`` fraction of calls. A zero rate draws nothing."""
        return rate > 0.0 and self._rng.random() < rate

    def plan(self, faults: Faults, *, is_upload: bool, may_break_json: bool) -> FaultPlan:
        """Decide every fault of one request, in a fixed draw order.

        All dice are rolled even when an earlier one already wins, so that one
        request always consumes the same draws whatever the outcome.
        """
        slow = self.roll(faults.slow_rate)
        hang = self.roll(faults.hang_rate)
        drop = is_upload and self.roll(faults.drop_rate)
        fail = self.roll(faults.fail_rate)
        bad_gateway = self.roll(faults.bad_gateway_rate)
        not_json = may_break_json and self.roll(faults.not_json_rate)
        # Only one answer can win; hanging or dropping leaves nothing to answer.
        fail = fail and not (hang or drop)
        bad_gateway = bad_gateway and not (hang or drop or fail)
        not_json = not_json and not (hang or drop or fail or bad_gateway)
        fail_html = False
        if fail:
            # Alternate rather than roll, so even two failures show both bodies.
            self._failures += 1
            fail_html = self._failures % 2 == 1
        plan = FaultPlan(slow, hang, drop, fail, fail_html, bad_gateway, not_json)
        for kind in ("slow", "hang", "drop", "fail", "bad_gateway", "not_json"):
            if getattr(plan, kind):
                self.count(kind)
        return plan
