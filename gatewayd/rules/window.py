"""Tumbling windows aligned to wall-clock boundaries (multiples of N s since the epoch, UTC).

A window consumes its readings and, when it closes, sends one reading per aggregate through the
rest of the chain (its own state per aggregate), as point `<point>/<aggregate>` stamped with the
window's start. It closes on the first reading of a later window, or by the clock when
`tick(now_ms)` passes its end plus the grace period (readings stamped just before the end may
still be on their way). A reading for a window already closed is late: dropped and counted.
Bad-quality and text readings are not aggregated but leave a trace: a window with some of them
emits quality uncertain (reason `some_bad_readings`), one with only them emits bad values.
"""

from __future__ import annotations

from collections.abc import Callable

from gatewayd.config.rules import WindowStep
from gatewayd.reading import Quality, Record, Value

from .flow import Chain, Flow


class Window:
    __slots__ = (
        "aggs",
        "bad",
        "closed_until",
        "count",
        "grace",
        "last",
        "late",
        "max",
        "min",
        "ms",
        "point",
        "start",
        "sum",
        "tails",
    )

    def __init__(self, cfg: WindowStep, point: str) -> None:
        self.ms = cfg.seconds * 1000
        self.grace = round(cfg.grace_s * 1000)
        self.aggs = cfg.emit
        self.point = point
        self.tails: tuple[Chain, ...] = ()  # one per aggregate, set when the chain is built
        self.start: int | None = None  # of the open window
        self.closed_until = 0  # end of the last window closed
        self.late = 0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.bad = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.last: Value = None

    def __call__(self, f: Flow) -> bool:
        ts = f.ts
        start = ts - ts % self.ms
        if start != self.start:
            if ts < self.closed_until or (self.start is not None and start < self.start):
                self.late += 1
                return False
            if self.start is not None:
                self.close(f.emit)
            self.start = start
        if f.numeric:
            v: float = f.value  # type: ignore[assignment]
            self.count += 1
            self.sum += v
            if v < self.min:
                self.min = v
            if v > self.max:
                self.max = v
            self.last = v
        else:
            self.bad += 1
        return False

    def tick(self, now_ms: int, emit: Callable[[Record], object]) -> None:
        if self.start is not None and now_ms >= self.start + self.ms + self.grace:
            self.close(emit)

    def close(self, emit: Callable[[Record], object]) -> None:
        assert self.start is not None
        n = self.count
        values: dict[str, Value] = {
            "count": n,
            "min": self.min if n else None,
            "max": self.max if n else None,
            "mean": self.sum / n if n else None,
            "last": self.last,
        }
        quality, reason = Quality.GOOD, None
        if self.bad:
            quality, reason = (
                (Quality.UNCERTAIN, "some_bad_readings")
                if n
                else (
                    Quality.BAD,
                    "no_good_readings",
                )
            )
        start = self.start
        self.closed_until = start + self.ms
        self.start = None
        self._reset()
        for agg, tail in zip(self.aggs, self.tails, strict=True):
            f = Flow(tail.point, emit)
            f.ts, f.value, f.quality, f.reason = start, values[agg], quality, reason
            f.numeric = quality is not Quality.BAD
            tail.run(f)
