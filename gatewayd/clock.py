"""Clock sanity: a Pi without a real-time clock boots with a time that may be years off."""

from __future__ import annotations

import time

# A clock earlier than this build cannot be right; tokens minted with it would be refused.
BUILD_EPOCH_S = 1_764_000_000  # 2025-11-24


def clock_plausible(now: float | None = None) -> bool:
    return (time.time() if now is None else now) >= BUILD_EPOCH_S
