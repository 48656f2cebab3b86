"""The units that flow through the pipeline: a driver's Reading and the Record that is stored.

Both are immutable. A Reading is what a field device said; a Record is what the rules decided to
keep, with the lane (priority) it travels in. The buffer gives each stored Record a stable id.

Reading and Record are NamedTuples, not frozen dataclasses: one of each is made per reading, and
a frozen dataclass's __init__ (an object.__setattr__ per field) costs three to four times as
much. They keep a dataclass's equality (only with their own class) and are never iterated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple

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


class Reading(NamedTuple):
    point: str  # "boiler/flow_temp"
    ts_ms: int  # UTC epoch milliseconds
    value: Value
    quality: Quality = Quality.GOOD
    reason: str | None = None  # why, when quality is not GOOD (e.g. clock_unsynced)

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __ne__(self, other: object) -> bool:
        return not _same(self, other)

    def __hash__(self) -> int:  # defining __eq__ would otherwise make it unhashable
        return tuple.__hash__(self)


class Record(NamedTuple):
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
        # A Reading is the first five fields of a Record: no per-field work.
        return _new(cls, reading + _TELEMETRY)

    def __eq__(self, other: object) -> bool:
        return _same(self, other)

    def __ne__(self, other: object) -> bool:
        return not _same(self, other)

    def __hash__(self) -> int:  # defining __eq__ would otherwise make it unhashable
        return tuple.__hash__(self)


_new = tuple.__new__
_TELEMETRY = (Lane.TELEMETRY, None)


def _same(a: tuple[object, ...], b: object) -> bool:
    """A dataclass's equality: same class and equal fields (a plain tuple is not a Record)."""
    return type(a) is type(b) and tuple.__eq__(a, b)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A Record as it sits in the buffer, with the id that makes re-sends de-duplicable."""

    id: int
    record: Record
