"""The wall clock as a Pi without a real-time clock has it: possibly years off, stepped by NTP.

Invariants:
- `PLAUSIBLE_S` (this build's date) is the one plausibility date: a wall clock earlier than it
  is not set yet. The uplink's hold, the buffer's age expiry and restamp, and the mark on
  readings all use it; no other module writes a date of its own (test_one_plausible_date).
- Intervals never use the wall clock (the scheduler runs on `loop.time()`); the wall clock is for
  stamps and tokens only.
- `WallClock.check()` compares wall - monotonic with its value at the last check: a change of
  `STEP_S` or more is a step, logged once at WARNING with its size.
- A reading stamped before `PLAUSIBLE_S` is marked quality uncertain, reason `clock_unsynced`
  (see `polling`). When the clock goes from unset to set, `check()` returns the correction
  once: a stamp t taken while it was unset was really taken at t + correction (wall - monotonic
  then and now). The monotonic clock restarts at boot, so only this boot's stamps are truly
  corrected; an older unset stamp moves by the same amount and keeps its mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gatewayd.logs import quote

log = logging.getLogger("gatewayd.clock")

# A clock earlier than this build cannot be right; tokens minted with it would be refused.
PLAUSIBLE_S = 1_764_000_000  # 2025-11-24
PLAUSIBLE_MS = PLAUSIBLE_S * 1000
STEP_S = 1.0  # NTP slews smaller offsets; a change this big in wall - monotonic is a step
UNSYNCED = "clock_unsynced"  # the reason on readings stamped before PLAUSIBLE_S


def clock_plausible(now: float | None = None) -> bool:
    return (time.time() if now is None else now) >= PLAUSIBLE_S


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(t)


class WallClock:
    """Watches the wall clock against the monotonic one (both injectable for tests)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wall = wall
        self.mono = mono
        now = wall()
        self.offset = now - mono()  # wall - monotonic at the last check
        self.steps = 0
        self.correction_ms: int | None = None  # since the clock was last set
        self.plausible = clock_plausible(now)
        # wall - monotonic while the clock was unset: how to correct those stamps later
        self.unset_offset: float | None = None if self.plausible else self.offset
        if not self.plausible:
            self._say_unset(now)

    def check(self) -> int | None:
        """Look for a step; returns the correction in ms for stamps taken while the clock was
        unset, once, when it has just been set (else None)."""
        now = self.wall()
        offset = now - self.mono()
        step = offset - self.offset
        self.offset = offset
        if abs(step) >= STEP_S:
            self.steps += 1
            log.warning(
                "clock_stepped step_s=%.3f from=%s to=%s",
                step,
                _iso(now - step),
                _iso(now),
            )
        plausible = clock_plausible(now)
        if plausible == self.plausible:
            return None
        self.plausible = plausible
        if not plausible:
            self._say_unset(now)
            self.correction_ms = None
            if self.unset_offset is None:
                self.unset_offset = offset
            return None
        unset, self.unset_offset = self.unset_offset, None
        correction = self.correction_ms = round((offset - unset) * 1000) if unset is not None else 0
        log.warning(
            "clock_synced now=%s correction_s=%.3f hint=%s",
            _iso(now),
            correction / 1000,
            quote("readings stamped while it was unset are restamped and stay marked"),
        )
        return correction

    def _say_unset(self, now: float) -> None:
        log.warning(
            "clock_unsynced now=%s plausible_from=%s hint=%s",
            _iso(now),
            _iso(PLAUSIBLE_S),
            quote("readings are marked uncertain (clock_unsynced) until NTP sets the clock"),
        )
