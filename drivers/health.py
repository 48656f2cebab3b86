"""Per-device health: consecutive failed polls and the exponential, capped backoff they earn.

A device that fails `threshold` polls in a row is skipped until its backoff ends, then polled
again automatically; each further failure doubles the wait up to `cap_s`; one good poll resets.
A dead device thus costs one timeout per backoff step instead of one per poll interval.
"""

from __future__ import annotations


class Health:
    def __init__(self, threshold: int = 3, base_s: float = 1.0, cap_s: float = 60.0) -> None:
        self.threshold, self.base_s, self.cap_s = threshold, base_s, cap_s
        self.streak = 0  # consecutive failed polls
        self.retry_at = 0.0  # monotonic time before which polls are skipped

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def backoff_s(self) -> float:
        if self.streak < self.threshold:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** (self.streak - self.threshold))

    def record(self, ok: bool, now: float) -> bool:
        """Note a poll's outcome; True when this failure starts or lengthens a backoff."""
        if ok:
            self.streak, self.retry_at = 0, 0.0
            return False
        self.streak += 1
        wait = self.backoff_s()
        self.retry_at = now + wait
        return wait > 0
