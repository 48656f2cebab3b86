"""Plan the fewest read requests for a poll group.

Points of one table are sorted by address and merged into one request while the span stays within
the protocol limit (125 registers, 2000 bits) and the hole between two points is at most `max_gap`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gatewayd.config import PointConfig

MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: str
    address: int
    count: int
    points: tuple[PointConfig, ...]


def plan_requests(
    points: Iterable[PointConfig],
    max_gap: int = 16,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    by_table: dict[str, list[PointConfig]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    out: list[ReadRequest] = []
    for table in ("coil", "discrete", "input", "holding"):
        pts = sorted(by_table.get(table, ()), key=lambda p: (p.address, p.register_count))
        limit = max_bits if table in ("coil", "discrete") else max_registers
        start = end = -1
        group: list[PointConfig] = []
        for p in pts:
            p_end = p.address + p.register_count
            if group and p.address - end <= max_gap and max(end, p_end) - start <= limit:
                group.append(p)
                end = max(end, p_end)
                continue
            if group:
                out.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [p], p.address, p_end
        if group:
            out.append(ReadRequest(table, start, end - start, tuple(group)))
    return out
