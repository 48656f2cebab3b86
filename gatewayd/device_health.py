"""Devices up and down, as the cloud and `gatewayd status` see them.

Invariants:
- each outage a driver reports (`Driver.down`, a new DeviceDown per outage) becomes exactly one
  `device_down` event, and its end one `device_up` event, both on the events lane: point = the
  device id; device_down: ts = the outage's first failed poll, value = the cause in words,
  quality bad; device_up: value = the outage's length in seconds, quality good;
- while a device is down its points' qualities are on the state document (`devices`), not in a
  bad reading per point per poll: every point bad with the outage's reason code;
- the gauge `device_down_since_timestamp_seconds{device, cause}` (the outage's start) exists
  only while the device is down, so `gatewayd status` shows the cause;
- observing a poll costs a dict store and an identity test: it runs after every poll.
"""

from __future__ import annotations

from gatewayd.drivers import DeviceDown, Driver, PollGroup
from gatewayd.metrics import Metrics
from gatewayd.reading import Lane, Quality, Reading, Record, now_ms

DEVICE_DOWN = "device_down"
DEVICE_UP = "device_up"
DOWN_GAUGE = "device_down_since_timestamp_seconds"


class DeviceHealth:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._down: dict[str, DeviceDown] = {}
        # The last poll that returned readings, per poll group (a down device returns none).
        self._last: dict[str, tuple[PollGroup, list[Reading]]] = {}

    def observe(
        self, group: PollGroup, readings: list[Reading], driver: Driver | None
    ) -> list[Record]:
        """Note one poll; the events it caused (none, or one device_down/device_up)."""
        if readings:
            self._last[group.name] = (group, readings)
        if driver is None:  # crashed and not rebuilt yet: polling reports that on its own
            return []
        dev = group.device
        down, prev = driver.down, self._down.get(dev)
        if down is prev:
            return []
        events: list[Record] = []
        if prev is not None:
            del self._down[dev]
            self.metrics.drop(DOWN_GAUGE, device=dev)
            now = now_ms()
            seconds = round((now - prev.since_ms) / 1000, 3)
            events.append(Record(dev, now, seconds, Quality.GOOD, DEVICE_UP, Lane.EVENT))
        if down is not None:
            self._down[dev] = down
            self.metrics.set(DOWN_GAUGE, down.since_ms / 1000, device=dev, cause=down.cause)
            events.append(
                Record(dev, down.since_ms, down.cause, Quality.BAD, DEVICE_DOWN, Lane.EVENT)
            )
        return events

    def forget(self, dev: str) -> None:
        """A device left the configuration."""
        self._down.pop(dev, None)
        self.metrics.drop(DOWN_GAUGE, device=dev)
        for name in [n for n, (g, _) in self._last.items() if g.device == dev]:
            del self._last[name]

    def document(self) -> dict[str, dict[str, object]]:
        """The state document's `devices`: status, cause while down, and the points' qualities
        (how many good, the bad ones by reason)."""
        good: dict[str, int] = {}
        bad: dict[str, dict[str, list[str]]] = {}
        for group, readings in self._last.values():
            dev = group.device
            n, by_reason = good.get(dev, 0), bad.setdefault(dev, {})
            down = self._down.get(dev)
            if down is not None:
                by_reason.setdefault(down.reason, []).extend(p.id for p in group.points)
                readings = []
            for r in readings:
                if r.quality is Quality.GOOD:
                    n += 1
                else:
                    by_reason.setdefault(str(r.reason), []).append(r.point.partition("/")[2])
            good[dev] = n
        out: dict[str, dict[str, object]] = {}
        for dev in sorted(good.keys() | self._down.keys()):
            doc: dict[str, object] = {
                "status": "up",
                "good": good.get(dev, 0),
                "bad": bad.get(dev, {}),
            }
            down = self._down.get(dev)
            if down is not None:
                doc.update(status="down", cause=down.cause, since_ms=down.since_ms)
            out[dev] = doc
        return out
