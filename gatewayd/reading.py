"""The units that flow through the pipeline: a driver's Reading and the Record that is stored.

Both are immutable. A Reading is what a field device said; a Record is what the rules decided to
keep, with the lane (priority) it travels in. The buffer gives each stored Record a stable id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum

Value = float | int | bool | str | None


class Quality(StrEnum):
    GOOD = "good"
    BAD = "bad"
    UNCERTAIN = "uncertain"


class Lane(IntEnum):
    """Priority lanes of the buffer: a lower number leaves first."""

    ALARM = 0
    EVENT = 1
    TELEMETRY = 2


def now_ms() -> int:
    """Wall-clock UTC epoch milliseconds, for stamps only (never for intervals)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Reading:
    point: str  # "boiler/flow_temp"
    ts_ms: int  # UTC epoch milliseconds
    value: Value
    quality: Quality = Quality.GOOD
    reason: str | None = None  # set when quality is BAD


@dataclass(frozen=True, slots=True)
class Record:
    """What the buffer stores and the uplink publishes."""

    point: str
    ts_ms: int
    value: Value
    quality: Quality = Quality.GOOD
    reason: str | None = None
    lane: Lane = Lane.TELEMETRY
    subfolder: str | None = None  # telemetry topic subfolder chosen by a routing rule

    @classmethod
    def of(cls, reading: Reading) -> Record:
        return cls(reading.point, reading.ts_ms, reading.value, reading.quality, reading.reason)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A Record as it sits in the buffer, with the id that makes re-sends de-duplicable."""

    id: int
    record: Record
