"""The contract every driver fulfils.

A driver owns its connections, never raises into the scheduler (a device fault becomes
bad-quality readings with a reason), and reconnects on its own.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Literal

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.config.options import NO_OPTIONS, OptionSet
from gatewayd.errors import PlacedError
from gatewayd.reading import Reading, Value

from .health import DeviceDown

# refused: nothing was sent (the configuration or the value does not allow it); failed: the
# device said no, or the request provably never left; unknown: it may have been applied.
WriteOutcome = Literal["refused", "failed", "unknown"]


class WriteError(PlacedError):
    """A write that did not succeed, with its `outcome` and a problem naming the reason
    (`exception 02 illegal data address`, `timeout: outcome unknown`, `connection refused`,
    `value 70000 does not fit uint16`). `place` is `device/point`.
    """

    def __init__(
        self, place: str, problem: str, fix: str | None = None, outcome: WriteOutcome = "refused"
    ) -> None:
        super().__init__(place, problem, fix)
        self.outcome: WriteOutcome = outcome


def check_write(point: PointConfig, value: Value, place: str) -> None:
    """Refuse (WriteError) a write the configuration does not allow: the point is not writable,
    the value is not finite (NaN, ±Inf: refused for every type), has the wrong type, lies outside
    min..max, or is a string longer than the point.

    The one check for every write path: drivers call it, and so do cloud commands before they
    reach a driver (a third-party driver may not check on its own).
    """
    if not point.writable:
        raise WriteError(place, "is not writable", "set writable = true in the point's config")
    # NaN compares false with every limit, so it would pass a range check and be written.
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteError(place, f"{value} is not a finite number", "send a finite number")
    if point.table == "holding" and point.type not in ("bool", "string"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WriteError(place, f"expected a number, got {value!r}", "send a number")
        if point.min is not None and value < point.min:
            raise WriteError(
                place, f"{value} is below min = {point.min}", f"send at least {point.min}"
            )
        if point.max is not None and value > point.max:
            raise WriteError(
                place, f"{value} is above max = {point.max}", f"send at most {point.max}"
            )
    elif point.type == "string":
        if not isinstance(value, str) or len(value.encode("ascii", "replace")) > 2 * point.length:
            raise WriteError(
                place, f"expected a string of at most {2 * point.length} characters", "shorten it"
            )
    elif not isinstance(value, bool | int) or value not in (0, 1):
        raise WriteError(place, f"expected true or false, got {value!r}", "send a boolean")


@dataclass(frozen=True, slots=True)
class PollGroup:
    """The points of one device polled at one interval."""

    device: str
    interval_ms: int
    points: tuple[PointConfig, ...]

    @property
    def name(self) -> str:
        return f"{self.device}@{self.interval_ms}ms"

    def __hash__(self) -> int:
        # Drivers look their plan up by group every poll: hashing every PointConfig of it would
        # cost more than the decoding. Equal groups still hash equal.
        return hash((self.device, self.interval_ms))


def poll_groups(device: DeviceConfig) -> list[PollGroup]:
    by_interval: dict[int, list[PointConfig]] = {}
    for p in device.points:
        by_interval.setdefault(p.interval_ms or device.interval_ms, []).append(p)
    return [PollGroup(device.id, ms, tuple(pts)) for ms, pts in sorted(by_interval.items())]


class Driver(ABC):
    # What the driver's device and point tables may carry (drivers/options.py); config reads
    # it through the driver's entry point. A driver that declares none takes devices with
    # only the common keys and points with id, interval_ms and unit.
    options: ClassVar[OptionSet] = NO_OPTIONS

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        # Plain counters the daemon may copy into its metrics, e.g. "requests", "faults.timeout",
        # "busy_retries", "backoffs", "splits", "lines_dropped.checksum".
        self.counters: Counter[str] = Counter()
        # Requests each poll group costs (by PollGroup.name), once planned.
        self.requests_per_group: dict[str, int] = {}
        # The current outage while the device is down (a new object per outage), else None. The
        # daemon turns each change into one device_down / device_up event; a driver that does not
        # track outages leaves it None.
        self.down: DeviceDown | None = None

    @abstractmethod
    async def poll(self, group: PollGroup) -> list[Reading]:
        """Read every point of the group; failures come back as BAD readings, never as raises.

        While `down` is set a driver may return no readings at all: the outage is one event and
        the points' qualities are on the state document, not a bad reading per point per poll.
        """

    @abstractmethod
    async def write(self, point: PointConfig, value: Value) -> None:
        """Write one point; the caller has checked that it is writable and within range.

        Raises WriteError with the outcome (refused, failed or unknown) and the reason.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""
