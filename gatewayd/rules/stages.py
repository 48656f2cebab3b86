"""Transforms and filters: one instance per (rule step, point), holding that point's state.

Steps that compute touch only numeric values (`flow.numeric`); a bad-quality or text reading
passes them unchanged, so the cloud still sees the gap and its reason. An expression that fails
at run time (division by zero, sqrt of a negative, no value yet for point("...")) turns the
reading bad with reason `expr_error:<Error>` instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gatewayd.config.rules import QualityStep, RouteStep
from gatewayd.reading import Lane, Quality

from .flow import NUMERIC, Flow

ExprFn = Callable[[float, float, float, float], Any]


class Scale:
    """value * k + b: scale/offset and unit conversion."""

    __slots__ = ("b", "k")

    def __init__(self, k: float, b: float) -> None:
        self.k, self.b = k, b

    def __call__(self, f: Flow) -> bool:
        if f.numeric:
            f.value = f.value * self.k + self.b  # type: ignore[operator]
        return True


class Clamp:
    __slots__ = ("hi", "lo")

    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.lo = float("-inf") if lo is None else lo
        self.hi = float("inf") if hi is None else hi

    def __call__(self, f: Flow) -> bool:
        if f.numeric:
            v: float = f.value  # type: ignore[assignment]
            f.value = self.lo if v < self.lo else self.hi if v > self.hi else v
        return True


class Round:
    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __call__(self, f: Flow) -> bool:
        if f.numeric:
            v: float = f.value  # type: ignore[assignment]
            if v != v or v in (float("inf"), float("-inf")):
                return True  # not finite: nothing to round (the codec flags it)
            f.value = round(v) if self.digits == 0 else round(float(v), self.digits)
        return True


class _ExprStage:
    """An expression sees value, prev (the value this step saw last time; equal to value at the
    first reading), dt (seconds since that reading) and ts (epoch seconds)."""

    __slots__ = ("errors", "fn", "prev", "prev_ts")

    def __init__(self, fn: ExprFn, errors: list[int]) -> None:
        self.fn = fn
        self.prev: float | None = None
        self.prev_ts = 0
        self.errors = errors  # one shared counter cell of the engine

    def eval(self, f: Flow) -> Any:
        v = float(f.value)  # type: ignore[arg-type]
        ts = f.ts
        prev = self.prev
        if prev is None:
            prev, dt = v, 0.0
        else:
            dt = (ts - self.prev_ts) / 1000
        self.prev, self.prev_ts = v, ts
        return self.fn(v, prev, dt, ts / 1000)


class Expression(_ExprStage):
    __slots__ = ()

    def __call__(self, f: Flow) -> bool:
        if f.numeric:
            try:
                v = self.eval(f)
            except Exception as exc:  # the expression is data: any failure is this reading's
                self.errors[0] += 1
                f.bad(f"expr_error:{type(exc).__name__}")
                return True
            if type(v) in NUMERIC:
                f.value = v
            else:  # (-8) ** 0.5 is complex: not a value the buffer can store
                self.errors[0] += 1
                f.bad(f"expr_error:{type(v).__name__}")
        return True


class Condition(_ExprStage):
    __slots__ = ("keep",)

    def __init__(self, fn: ExprFn, errors: list[int], keep: bool) -> None:
        super().__init__(fn, errors)
        self.keep = keep

    def __call__(self, f: Flow) -> bool:
        if not f.numeric:
            return True
        try:
            holds = bool(self.eval(f))
        except Exception as exc:  # as in Expression: the reading goes on, marked bad
            self.errors[0] += 1
            f.bad(f"expr_error:{type(exc).__name__}")
            return True
        return holds is self.keep


class Deadband:
    """Pass a value when it moved at least the band from the last value passed (absolute, or a
    percentage of that value), or when the heartbeat is due. After a bad reading the next good
    one always passes, so the recovery is visible."""

    __slots__ = ("band", "heartbeat", "last", "last_ts", "ratio")

    def __init__(self, absolute: float | None, percent: float | None, heartbeat_s: float | None):
        self.band = absolute or 0.0
        self.ratio = None if percent is None else percent / 100
        self.heartbeat = None if heartbeat_s is None else round(heartbeat_s * 1000)
        self.last: Any = None
        self.last_ts = 0

    def __call__(self, f: Flow) -> bool:
        v = f.value
        last = self.last
        hb = self.heartbeat
        # A clock stepped backwards counts as a heartbeat due, so the point is not silenced.
        if last is not None and (hb is None or 0 <= f.ts - self.last_ts < hb):
            if f.numeric:
                if type(last) in (int, float, bool):
                    d = abs(v - last)
                    band = self.band if self.ratio is None else abs(last) * self.ratio
                    if d != d:  # NaN: a change only if exactly one side is NaN
                        if (v != v) == (last != last):
                            return False
                    elif d == 0 or d < band:
                        return False
            elif f.quality is Quality.BAD:
                self.last = None
                return True
            elif v == last:  # text: report by exception
                return False
        self.last = v if f.numeric or f.quality is not Quality.BAD else None
        self.last_ts = f.ts
        return True


class RateLimit:
    __slots__ = ("interval", "last_ts")

    def __init__(self, min_interval_s: float) -> None:
        self.interval = round(min_interval_s * 1000)
        self.last_ts: int | None = None

    def __call__(self, f: Flow) -> bool:
        last = self.last_ts
        # A clock stepped backwards restarts the interval instead of blocking until it catches up.
        if last is not None and 0 <= f.ts - last < self.interval:
            return False
        self.last_ts = f.ts
        return True


class QualityFilter:
    __slots__ = ("bad", "uncertain")

    def __init__(self, cfg: QualityStep) -> None:
        self.bad = cfg.bad == "pass"
        self.uncertain = cfg.uncertain == "pass"

    def __call__(self, f: Flow) -> bool:
        q = f.quality
        if q is Quality.GOOD:
            return True
        return self.bad if q is Quality.BAD else self.uncertain


_LANES = {"alarm": Lane.ALARM, "event": Lane.EVENT, "telemetry": Lane.TELEMETRY}


class Route:
    __slots__ = ("lane", "subfolder")

    def __init__(self, cfg: RouteStep) -> None:
        self.subfolder = cfg.subfolder
        self.lane = None if cfg.lane is None else _LANES[cfg.lane]

    def __call__(self, f: Flow) -> bool:
        if self.subfolder is not None:
            f.subfolder = self.subfolder
        if self.lane is not None:
            f.lane = self.lane
        return True


def drop(f: Flow) -> bool:
    """A route with drop = true."""
    return False
