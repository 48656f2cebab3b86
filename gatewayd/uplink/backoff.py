"""Reconnect delays with full jitter, so a fleet that lost its broker does not return at once."""

from __future__ import annotations

import random


def full_jitter(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """`random(0, min(cap, base * 2**attempt))`; attempt counts from 0."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 32))
    return (rng or random).uniform(0, ceiling)
