"""Plan the fewest read requests for a poll group.

Points of one table are sorted by address and merged greedily into one request while the span
stays within the device's limit (at most 125 registers, 2000 bits) and the hole before the next
point is at most `max_gap` registers. Greedy is optimal here: any run of consecutive points that
fits is a valid request, so taking the longest run first never costs a request (and it never
sends more requests than Telegraf's shrink/rearrange, which only merge touching fields; the
property test checks this). Overlapping points (bits of one register, a word inside a long) share
a request.

`GroupPlan` is that plan as a device shapes it: a merged read the device refuses with exception 02
is split (`split_request`), and merged again after `REMERGE_AFTER` polls in which every request of
its points answered, so one stray exception costs a few polls of extra requests, never the rest of
the run. A read refused again after merging waits twice as long before the next try (at most
`REMERGE_MAX` polls): a real hole costs one extra request per that many polls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gatewayd.backoff import exponential
from gatewayd.config import PointConfig

from .decode import Decoder, request_decoder
from .types import BIT_TABLES, register_count

MAX_REGISTERS = 125
MAX_BITS = 2000
REMERGE_AFTER = 8  # clean polls before a split read is merged again
REMERGE_MAX = 1024  # the longest wait, after repeated refusals of the merged read


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
        pts = sorted(by_table.get(table, ()), key=lambda p: (p.address, register_count(p)))
        limit = max_bits if table in BIT_TABLES else max_registers
        start = end = -1
        group: list[PointConfig] = []
        for p in pts:
            p_end = p.address + register_count(p)
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
        by_place.setdefault((p.address, register_count(p)), []).append(p)
    return [ReadRequest(req.table, a, n, tuple(ps)) for (a, n), ps in sorted(by_place.items())]


def _key(req: ReadRequest) -> tuple[str, int, int]:
    return (req.table, req.address, req.count)


@dataclass(slots=True)
class _Split:
    merged: ReadRequest
    ids: frozenset[int]  # id() of its points: the requests it became hold exactly these
    refusals: int  # of the merged read, each after a merge (0: split the first time)
    clean: int = 0

    @property
    def wait(self) -> int:
        """Clean polls before merging again: REMERGE_AFTER, doubled per refusal, capped."""
        return int(exponential(self.refusals, REMERGE_AFTER, REMERGE_MAX))


class GroupPlan:
    """A poll group's current requests: the planner's fewest, with the splits the device forced."""

    __slots__ = ("refused", "requests", "splits")

    def __init__(self, requests: list[ReadRequest]) -> None:
        self.requests = requests
        self.splits: list[_Split] = []
        # Refusals of a split read that was merged again, by request: each doubles the wait.
        self.refused: dict[tuple[str, int, int], int] = {}

    def split(self, req: ReadRequest) -> list[ReadRequest]:
        """Replace `req` (refused with exception 02) by smaller requests; [] if it is one point."""
        parts = split_request(req)
        i = next((n for n, r in enumerate(self.requests) if r is req), None)
        if len(parts) <= 1 or i is None:  # one point, or already replaced by another poll
            return []
        self.requests[i : i + 1] = parts
        refusals = self.refused.get(_key(req), -1) + 1
        self.splits.append(_Split(req, frozenset(id(p) for p in req.points), refusals))
        return parts

    def answered(self, req: ReadRequest) -> None:
        """`req` came back with data: a merged read that works again starts afresh."""
        if self.refused:
            self.refused.pop(_key(req), None)

    def end_poll(self, faulted: list[ReadRequest]) -> None:
        """Count a poll for each split; merge those whose requests all answered long enough."""
        for s in list(self.splits):
            if any(id(r.points[0]) in s.ids for r in faulted):
                s.clean = 0
                continue
            s.clean += 1
            if s.clean >= s.wait and any(t is s for t in self.splits):  # not merged by an outer
                self._merge(s)

    def _merge(self, s: _Split) -> None:
        at = next(n for n, r in enumerate(self.requests) if id(r.points[0]) in s.ids)
        rest = [r for r in self.requests if id(r.points[0]) not in s.ids]
        rest.insert(at, s.merged)
        self.requests = rest
        # Splits of its parts go with it.
        self.splits = [t for t in self.splits if t is not s and not t.ids <= s.ids]
        self.refused[_key(s.merged)] = s.refusals
