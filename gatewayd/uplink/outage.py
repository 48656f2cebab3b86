"""How an outage shows in the log: its start, a summary while it lasts, its end.

Invariants:
- the first failure of an outage is logged at WARNING with its cause in words and, when known,
  the settings to check (`fix`); a cause not seen before in this outage is logged at WARNING too;
- while the outage lasts, one WARNING summary every `summary_s` (attempts so far, the last
  cause and fix), so a repeating refusal stays visible without a line per attempt; every attempt
  is logged at DEBUG;
- the end is one `uplink_recovered after_s=N attempts=M` line at INFO (attempts: the failed
  ones).
All times are monotonic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gatewayd.logs import quote

log = logging.getLogger("gatewayd.uplink")

SUMMARY_S = 60.0


class OutageLog:
    def __init__(
        self, summary_s: float = SUMMARY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.summary_s = summary_s
        self.clock = clock
        self.since: float | None = None  # start of the current outage
        self.attempts = 0  # failures in the current outage
        self._causes: set[str] = set()
        self._next_summary = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, event: str, reason: str, fix: str | None = None) -> None:
        """A connection attempt failed, or a session ended by a fault (`event` names which)."""
        now = self.clock()
        fields = f"reason={quote(reason)}" + (f" fix={quote(fix)}" if fix else "")
        if self.since is None:
            self.since, self.attempts, self._causes = now, 0, set()
            self._next_summary = now + self.summary_s
        self.attempts += 1
        if reason not in self._causes:
            self._causes.add(reason)
            log.warning("%s %s attempt=%d", event, fields, self.attempts)
        elif now >= self._next_summary:
            self._next_summary = now + self.summary_s
            since = now - self.since
            log.warning("uplink_still_down for_s=%.0f attempts=%d %s", since, self.attempts, fields)
        else:
            log.debug("%s %s attempt=%d", event, fields, self.attempts)

    def recovered(self, detail: str = "") -> None:
        """The outage is over; `detail` (e.g. `host=... port=...`) is appended to the line."""
        if self.since is None:
            return
        since = self.clock() - self.since
        log.info("uplink_recovered after_s=%.1f attempts=%d%s", since, self.attempts, detail)
        self.since = None
