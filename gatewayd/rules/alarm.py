"""Threshold alarms with hysteresis and on/off delays; events go to the alarm lane.

Per limit, two states. A high limit raises when value >= high has held for on_delay_s (by the
readings' timestamps), and clears when value < high - hysteresis has held for off_delay_s; a low
limit is the mirror image. Inside the band nothing changes, so a signal oscillating there cannot
chatter. Each event is a Record on Lane.ALARM: the point, the timestamp and value of the reading
that completed the transition, and reason `raise:<name>.<high|low>:<severity>` (or `clear:...`).
The reading itself passes on unchanged; an event keeps a subfolder set by an earlier route
step. Bad-quality and text readings leave the state alone.
"""

from __future__ import annotations

from gatewayd.config.rules import AlarmStep
from gatewayd.reading import Lane, Quality, Record

from .flow import Flow


class Limit:
    """One limit, written as a high limit on sign * value (a low limit is a high one on -value)."""

    __slots__ = (
        "active",
        "clear_reason",
        "hyst",
        "limit",
        "off_ms",
        "on_ms",
        "raise_reason",
        "sign",
        "since",
    )

    def __init__(self, cfg: AlarmStep, side: str, limit: float, sign: float) -> None:
        self.sign = sign
        self.limit = sign * limit
        self.hyst = cfg.hysteresis
        self.on_ms = round(cfg.on_delay_s * 1000)
        self.off_ms = round(cfg.off_delay_s * 1000)
        self.raise_reason = f"raise:{cfg.name}.{side}:{cfg.severity}"
        self.clear_reason = f"clear:{cfg.name}.{side}:{cfg.severity}"
        self.active = False
        self.since: int | None = None  # when the pending transition's condition began

    def __call__(self, f: Flow) -> bool:
        if not f.numeric:
            return True
        x = self.sign * f.value  # type: ignore[operator]
        crossed = x < self.limit - self.hyst if self.active else x >= self.limit
        if not crossed:
            self.since = None
            return True
        ts = f.ts
        if self.since is None or ts < self.since:
            self.since = ts
        if ts - self.since >= (self.off_ms if self.active else self.on_ms):
            reason = self.clear_reason if self.active else self.raise_reason
            self.active = not self.active
            self.since = None
            f.emit(Record(f.point, ts, f.value, Quality.GOOD, reason, Lane.ALARM, f.subfolder))
        return True


class Band:
    """A high and a low limit on one point."""

    __slots__ = ("high", "low")

    def __init__(self, high: Limit, low: Limit) -> None:
        self.high, self.low = high, low

    def __call__(self, f: Flow) -> bool:
        self.high(f)
        return self.low(f)


def alarm(cfg: AlarmStep) -> Limit | Band:
    high = None if cfg.high is None else Limit(cfg, "high", cfg.high, 1.0)
    low = None if cfg.low is None else Limit(cfg, "low", cfg.low, -1.0)
    if high is not None and low is not None:
        return Band(high, low)
    limit = high or low
    assert limit is not None  # the schema demands high, low or both
    return limit
