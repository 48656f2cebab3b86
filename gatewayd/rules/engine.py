from __future__ import annotations

from collections.abc import Iterable

from gatewayd.reading import Reading, Record


class Rules:
    """Pass-through: every reading becomes one telemetry record."""

    def process(self, readings: Iterable[Reading]) -> list[Record]:
        return [Record.of(r) for r in readings]
