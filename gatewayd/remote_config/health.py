"""What a candidate configuration must show before it is kept: its devices answering, and the
devices it did not touch still polled at their configured rate.

Invariants:
- a device new or changed by the candidate is healthy only after a GOOD poll (readings, none of
  them BAD) of the candidate's own poll groups: a poll of the old driver still in flight when the
  device was replaced does not count, and neither does a poll that reached nothing (a closed
  port, an unroutable host, a wrong unit id, a file that is no serial port: all BAD readings);
- a device the candidate left unchanged must keep `RATE_TOLERANCE` of its configured poll rate
  once `RATE_WINDOW_S` has passed (a candidate that starves the loop is rolled back), and, if its
  last poll before the push was good, poll good again;
- observation costs nothing outside a trial: the daemon feeds `observe` only while one runs.
"""

from __future__ import annotations

import time

from gatewayd.config import DeviceConfig, GatewayConfig
from gatewayd.drivers import PollGroup, poll_groups
from gatewayd.reading import Quality, Reading

RATE_TOLERANCE = 0.5  # generous: a loaded 2-core box must not roll back a sound push
RATE_WINDOW_S = 2.0  # the rate is judged over at least this long (or most of the deadline)
MIN_EXPECTED_POLLS = 5  # fewer expected polls in the window say nothing about a rate


def poll_rate(dev: DeviceConfig) -> float:
    """Polls per second the configuration asks of a device (one per group per interval)."""
    return sum(1000.0 / g.interval_ms for g in poll_groups(dev))


class TrialWatch:
    def __init__(
        self,
        new: GatewayConfig,
        old: GatewayConfig | None = None,
        was_good: frozenset[str] = frozenset(),
    ) -> None:
        """`old`: the configuration before the candidate (None at start: every device is new);
        `was_good`: the unchanged devices whose last poll before the candidate was good."""
        self.t0 = time.monotonic()
        old_devs = {d.id: d for d in old.devices} if old is not None else {}
        self._fresh: dict[str, set[int]] = {}  # new/changed device -> ids of its PointConfigs
        self._keep: list[DeviceConfig] = [d for d in new.devices]  # keeps those ids alive
        self.rates: dict[str, float] = {}  # unchanged device -> configured polls/s
        self.need_good: set[str] = set()
        for d in new.devices:
            if not d.points:
                continue  # nothing to poll, nothing to prove
            if old_devs.get(d.id) == d:
                self.rates[d.id] = poll_rate(d)
                if d.id in was_good:
                    self.need_good.add(d.id)
            else:
                self._fresh[d.id] = {id(p) for p in d.points}
                self.need_good.add(d.id)
        self.good: set[str] = set()
        self.polls: dict[str, int] = dict.fromkeys(self.rates, 0)
        self.last_bad: dict[str, str] = {}  # device -> the reason of its last bad poll

    def observe(self, group: PollGroup, readings: list[Reading]) -> None:
        dev = group.device
        fresh = self._fresh.get(dev)
        if fresh is not None and not (group.points and id(group.points[0]) in fresh):
            return  # a poll of the configuration being replaced
        if dev in self.polls:
            self.polls[dev] += 1
        bad = next((r for r in readings if r.quality is Quality.BAD), None)
        if bad is None and readings:
            self.good.add(dev)
        elif bad is not None:
            self.last_bad[dev] = bad.reason or "bad reading"

    def problem(self, deadline_s: float) -> str | None:
        """None when the devices are healthy; else what is wrong so far."""
        missing = sorted(self.need_good - self.good)
        if missing:
            shown = ", ".join(
                f"{d} ({self.last_bad[d]})" if d in self.last_bad else d for d in missing[:5]
            )
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            return f"devices {shown}{more} completed no good poll within {deadline_s:g} s"
        elapsed = time.monotonic() - self.t0
        window = min(RATE_WINDOW_S, 0.8 * deadline_s)
        for dev, rate in self.rates.items():
            if rate * window < MIN_EXPECTED_POLLS:
                continue  # too slow to judge within the deadline
            if elapsed < window:
                return f"device {dev}'s poll rate is still being measured"
            expected = rate * elapsed
            if self.polls[dev] < RATE_TOLERANCE * expected:
                return (
                    f"device {dev} polled {self.polls[dev]} times in {elapsed:.1f} s, "
                    f"configured for {expected:.0f}: the new configuration starves it"
                )
        return None
