"""What every simulated slave has, whatever its transport: units, their signals and faults."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .datamodel import DataModel
from .faults import Faults
from .signals import Signal


@dataclass
class Feed:
    """Writes a signal into registers at every tick, scaled and encoded as the type says."""

    table: str
    address: int
    signal: Signal
    encode: Callable[[float], list[int]]


class Slave:
    def __init__(self) -> None:
        self.units: dict[int, DataModel] = {}
        self.feeds: dict[int, list[Feed]] = {}
        self._faults: dict[int, Faults] = {}
        self.requests = 0
        self.asked: list[int] = []  # unit ids in the order their requests arrived (last 1000)
        self._t0 = time.monotonic()

    def unit(self, unit_id: int = 1) -> DataModel:
        return self.units.setdefault(unit_id, DataModel())

    def faults(self, unit_id: int = 1) -> Faults:
        return self._faults.setdefault(unit_id, Faults())

    def feed(
        self,
        unit_id: int,
        table: str,
        address: int,
        signal: Signal,
        encode: Callable[[float], list[int]] | None = None,
    ) -> None:
        self.unit(unit_id)
        enc = encode or (lambda v: [round(v) & 0xFFFF])
        self.feeds.setdefault(unit_id, []).append(Feed(table, address, signal, enc))
        self._apply(unit_id)

    def _apply(self, unit_id: int) -> None:
        t = time.monotonic() - self._t0
        model = self.units[unit_id]
        for f in self.feeds.get(unit_id, ()):
            model.set_words(f.table, f.address, f.encode(f.signal(t)))

    def _note(self, unit_id: int) -> Faults | None:
        """Count a request; the faults to apply to its answer (a copy), if any are set."""
        self.requests += 1
        self.asked.append(unit_id)
        del self.asked[:-1000]
        fault = self._faults.get(unit_id)
        if fault is None or not fault.active():
            return None
        now = Faults(**vars(fault))
        fault.used()
        return now
