"""A counter driver: each poll a point reads `start + step * polls`, scaled by its `factor`.

It exists to show the plugin contract (drivers/README.md in gatewayd): the device and point
options are declared here, config validates them with place and fix, and nothing in gatewayd's
core names them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from gatewayd.config import ConfigError, DeviceConfig, PointConfig
from gatewayd.drivers import Driver, PollGroup, WriteError, check_write
from gatewayd.drivers.options import At, OptionSet, device_options, option
from gatewayd.reading import Reading, Value, now_ms


@dataclass(frozen=True, slots=True)
class CounterOptions:
    """The device table's own keys."""

    start: int = option(0, lo=0, hi=1_000_000, doc="the first value")
    step: int = option(1, lo=1, hi=1000, doc="added at every poll")
    mode: Literal["up", "down"] = option("up")


@dataclass(frozen=True, slots=True)
class CounterPoint:
    """A point's keys beside id and interval_ms."""

    factor: float = option(1.0, lo=-1000.0, hi=1000.0, doc="the value is the count times this")
    unit: str = option("")
    writable: bool = option(False, doc="a write sets the count")


def make_point(v: CounterPoint, base: PointConfig, at: At) -> PointConfig:
    # PointConfig has no `factor`: the driver's own keys travel in `options`.
    return replace(base, unit=v.unit, writable=v.writable, table="holding", options=v)


def check(device: DeviceConfig, at: At) -> None:
    o = device_options(device, CounterOptions)
    if o.mode == "down" and o.start == 0:
        raise ConfigError(at("start"), 'is 0, demanded above 0 by mode = "down"', "raise it")


class CounterDriver(Driver):
    options = OptionSet(
        device=CounterOptions, point=CounterPoint, make_point=make_point, check=check
    )

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.opts = device_options(device, CounterOptions)
        self.count = self.opts.start

    async def poll(self, group: PollGroup) -> list[Reading]:
        sign = 1 if self.opts.mode == "up" else -1
        self.count += sign * self.opts.step
        self.counters["polls"] += 1
        ts = now_ms()
        return [
            Reading(f"{self.device.id}/{p.id}", ts, self.count * p.options.factor)
            for p in group.points
        ]

    async def write(self, point: PointConfig, value: Value) -> None:
        place = f"{self.device.id}/{point.id}"
        check_write(point, value, place)  # the one check every driver makes
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise WriteError(place, f"expected a number, got {value!r}", "send a number")
        self.count = int(value / point.options.factor)

    async def close(self) -> None:
        pass
