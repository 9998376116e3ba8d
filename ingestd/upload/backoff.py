"""Exponential backoff with jitter, shared by uploads, confirmations and deletions."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before attempt ``attempt + 1`` (``attempt`` >= 1 failures so far).

    "Equal jitter": half the exponential step is fixed, half random, so many
    clients that failed together do not come back together, yet no retry is
    ever immediate.
    """
    step = min(maximum, initial * 2.0 ** max(0, attempt - 1))
    draw: float = (rng or random).random()
    return step / 2 + draw * step / 2
