"""Plan the fewest read requests for a poll group.

Points of one table are sorted by address and merged greedily into one request while the span
stays within the device's limit (at most 125 registers, 2000 bits) and the hole before the next
point is at most `max_gap` registers. Greedy is optimal here: any run of consecutive points that
fits is a valid request, so taking the longest run first never costs a request (and it never
sends more requests than Telegraf's shrink/rearrange, which only merge touching fields; the
property test checks this). Overlapping points (bits of one register, a word inside a long) share
a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gatewayd.config import PointConfig

from .decode import Decoder, request_decoder

MAX_REGISTERS = 125
MAX_BITS = 2000
BIT_TABLES = ("coil", "discrete")


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: str
    address: int
    count: int
    points: tuple[PointConfig, ...]
    # The response's words -> the points' values, compiled once when the request is planned.
    decode: Decoder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", request_decoder(self.points, self.address, self.count))


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
        limit = max_bits if table in BIT_TABLES else max_registers
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


def split_request(req: ReadRequest) -> list[ReadRequest]:
    """Smaller requests for a merged read the device refused (exception 02, a hole it lacks).

    First the runs of touching points (no bridged gap); a run that is refused again is split
    into single points, so a bad register costs only its own points.
    """
    runs = plan_requests(req.points, max_gap=0, max_registers=req.count, max_bits=req.count)
    if len(runs) > 1:
        return runs
    by_place: dict[tuple[int, int], list[PointConfig]] = {}
    for p in req.points:
        by_place.setdefault((p.address, p.register_count), []).append(p)
    return [ReadRequest(req.table, a, n, tuple(ps)) for (a, n), ps in sorted(by_place.items())]
