"""The memory ceiling: this process's resident set against `[gateway] memory_limit_mb`.

Invariants:
- `over()` reads /proc/self/statm at most once per CHECK_S (a poll may ask it every time);
- the guard trips at TRIP_SHARE of the ceiling, leaving room for what is in flight when it trips
  (the polls already running, the uplink window), so the resident set stays under the ceiling;
- where /proc is missing (not Linux) the guard never trips: it bounds nothing rather than guess.

CPython seldom gives freed memory back to the system, so the resident set does not fall once the
guard has tripped; the poller therefore sheds only while another poll is running (polling slows
to one poll at a time near the ceiling, it never stops).
"""

from __future__ import annotations

import os
import time

CHECK_S = 0.1
TRIP_SHARE = 0.8
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class MemoryGuard:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._trip = int(limit_bytes * TRIP_SHARE)
        self._next = 0.0
        self._over = False

    def over(self) -> bool:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + CHECK_S
            rss = rss_bytes()
            self._over = rss is not None and rss >= self._trip
        return self._over
