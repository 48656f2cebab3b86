"""The mutable carrier of one reading through a chain of stages, and the chain itself.

A chain reuses one Flow for every reading of its point, so the hot path allocates nothing but
the Record it emits. A stage is a callable `stage(flow) -> bool`: False stops the reading.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gatewayd.reading import Lane, Quality, Record, Value

NUMERIC = frozenset((int, float, bool))


class Flow:
    __slots__ = (
        "emit",
        "lane",
        "numeric",
        "point",
        "quality",
        "reason",
        "subfolder",
        "ts",
        "value",
    )

    def __init__(self, point: str, emit: Callable[[Record], object]) -> None:
        self.point = point
        self.emit = emit  # where records go: the output list's append
        self.ts = 0
        self.value: Value = None
        self.quality = Quality.GOOD
        self.reason: str | None = None
        self.lane = Lane.TELEMETRY
        self.subfolder: str | None = None
        # True when steps that compute may use the value: a number of good or uncertain quality.
        self.numeric = False

    def bad(self, reason: str) -> None:
        self.value = None
        self.quality = Quality.BAD
        self.reason = reason
        self.numeric = False


class Stage(Protocol):
    def __call__(self, f: Flow) -> bool: ...


class Chain:
    """The stages one point's readings pass, in rule order, each with that point's state."""

    __slots__ = ("calls", "point")

    def __init__(self, point: str, stages: tuple[Stage, ...]) -> None:
        self.point = point
        # Bound __call__ methods: calling one costs well under half of calling the instance.
        self.calls: tuple[Callable[[Flow], bool], ...] = tuple(s.__call__ for s in stages)

    def run(self, f: Flow) -> None:
        for call in self.calls:
            if not call(f):
                return
        f.emit(Record(f.point, f.ts, f.value, f.quality, f.reason, f.lane, f.subfolder))
