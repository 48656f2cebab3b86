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


class _Limit:
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

    def check(self, f: Flow, v: float) -> None:
        x = self.sign * v
        ts = f.ts
        if self.active:
            crossed = x < self.limit - self.hyst
            delay, reason = self.off_ms, self.clear_reason
        else:
            crossed = x >= self.limit
            delay, reason = self.on_ms, self.raise_reason
        if not crossed:
            self.since = None
            return
        if self.since is None or ts < self.since:
            self.since = ts
        if ts - self.since >= delay:
            self.active = not self.active
            self.since = None
            f.emit(Record(f.point, ts, f.value, Quality.GOOD, reason, Lane.ALARM, f.subfolder))


class Alarm:
    __slots__ = ("limits",)

    def __init__(self, cfg: AlarmStep) -> None:
        limits = []
        if cfg.high is not None:
            limits.append(_Limit(cfg, "high", cfg.high, 1.0))
        if cfg.low is not None:
            limits.append(_Limit(cfg, "low", cfg.low, -1.0))
        self.limits = tuple(limits)

    def __call__(self, f: Flow) -> bool:
        if f.numeric:
            v = f.value
            for limit in self.limits:
                limit.check(f, v)  # type: ignore[arg-type]
        return True

    @property
    def active(self) -> dict[str, bool]:
        """Which limits are raised, for tests and status."""
        return {lim.raise_reason.split(":")[1]: lim.active for lim in self.limits}
