"""Per-device health: up or down from consecutive failed polls, and a log of it that stays short.

Invariants:
- a device is down once `threshold` polls in a row failed, and up again at its first good poll;
  each outage is one `DeviceDown` object (the daemon turns each into one `device_down` event and
  its end into one `device_up` event);
- nothing here delays a poll: a down device is still polled at its interval (drivers probe it
  cheaply), so it is back within one interval of its return;
- log lines per device are bounded whatever the flapping: per window (`window_s`) at most one
  `device_failing` (WARNING, the first failure of an outage), one `device_recovered` (INFO), and,
  at the window's end if anything went unlogged, one summary with counts, so at most three lines
  per window. An episode (from its first failure) ends, silently, once a whole window passed
  with the device up and nothing to report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gatewayd.reading import now_ms


@dataclass(frozen=True, slots=True)
class DeviceDown:
    """One outage: why (`cause`, for people; `reason`, the reading reason code) and since when."""

    cause: str  # "connection refused", "timeout", "exception 04 server device failure"
    reason: str  # "disconnected", "timeout", "exception_04"
    since_ms: int  # UTC epoch ms of the first failed poll of the outage


class FailureLog:
    """The rate-limited log lines of one device's failures (see the module's invariants)."""

    def __init__(self, log: logging.Logger, device: str, window_s: float = 60.0) -> None:
        self.log, self.device, self.window_s = log, device, window_s
        self.open = False  # an episode is going on
        self.failing = False
        self.lines = 0  # lines logged at INFO or above, for tests and benchmarks
        self._window_end = 0.0
        self._failing_logged = self._recovered_logged = False  # in this window
        self._failed_at = 0.0  # monotonic start of the current failure
        self._cause = ""
        self._outage_fails = 0  # failed polls of the current failure
        # Not told yet in any line: failed polls, outages (a failure after a recovery), recoveries.
        self._fails = self._outages = self._recoveries = 0

    def failed(self, cause: str, now: float) -> None:
        self._roll(now)
        self._cause = cause
        new_outage = not self.failing
        if new_outage:
            self.failing, self._failed_at, self._outage_fails = True, now, 0
        self._outage_fails += 1
        if not self.open:
            self.open = True
            self._window_end = now + self.window_s
            self._recovered_logged = False
        elif not new_outage or self._failing_logged:
            self._outages += new_outage
            self._fails += 1
            self.log.debug("device_failing device=%s cause=%r", self.device, cause)
            return
        self._failing_logged = True
        self._emit(logging.WARNING, "device_failing device=%s cause=%r", self.device, cause)

    def ok(self, now: float) -> None:
        if not self.open:
            return
        self._roll(now)
        if not self.failing:
            return
        self.failing = False
        if self._recovered_logged:
            self._recoveries += 1
            return
        self._recovered_logged = True
        self._emit(
            logging.INFO,
            "device_recovered device=%s after_s=%.1f failed_polls=%d",
            self.device,
            now - self._failed_at,
            self._outage_fails,
        )
        self._fails = self._outages = self._recoveries = 0

    def _roll(self, now: float) -> None:
        if not self.open or now < self._window_end:
            return
        if self._fails or self._recoveries or self._outages:
            self._emit(
                logging.WARNING if self.failing else logging.INFO,
                "device_summary device=%s state=%s cause=%r failed_polls=%d outages=%d "
                "recoveries=%d window_s=%.0f",
                self.device,
                "down" if self.failing else "up",
                self._cause,
                self._fails,
                self._outages,
                self._recoveries,
                self.window_s,
            )
            self._fails = self._outages = self._recoveries = 0
        elif not self.failing:
            self.open = False  # a quiet window with the device up: the episode is over
            return
        self._window_end = now + self.window_s
        self._failing_logged = self._recovered_logged = False

    def _emit(self, level: int, msg: str, *args: object) -> None:
        self.lines += 1
        self.log.log(level, msg, *args)


class Health:
    """Consecutive failed polls of one device, its outage while down, and its failure log."""

    def __init__(self, log: FailureLog, threshold: int = 3) -> None:
        self.log, self.threshold = log, threshold
        self.streak = 0  # consecutive failed polls
        self.down: DeviceDown | None = None
        self._first_fail_ms = 0

    def failed(self, cause: str, reason: str, now: float) -> bool:
        """Note a failed poll; True when it is the one that takes the device down."""
        if self.streak == 0:
            self._first_fail_ms = now_ms()
        self.streak += 1
        self.log.failed(cause, now)
        if self.down is None and self.streak >= self.threshold:
            self.down = DeviceDown(cause, reason, self._first_fail_ms)
            return True
        return False

    def ok(self, now: float) -> None:
        self.streak = 0
        self.down = None
        self.log.ok(now)
