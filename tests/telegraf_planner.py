"""A reference planner: Telegraf's modbus "shrink" and "rearrange" strategies, rewritten from
plugins/inputs/modbus/request.go, to compare request counts with ours (tests and bench)."""

from __future__ import annotations

from collections.abc import Iterable

Field = tuple[int, int]  # (address, length)
Request = tuple[int, int, list[Field]]  # (address, length, fields)


def _touching_groups(fields: list[Field]) -> list[list[Field]]:
    # Telegraf sorts by address, longer first, and only joins a field that starts exactly where
    # the running group ends (overlapping fields start a new group).
    groups: list[list[Field]] = []
    start = length = 0
    for a, n in sorted(fields, key=lambda f: (f[0], -f[1])):
        if groups and a == start + length:
            groups[-1].append((a, n))
            length += n
        else:
            groups.append([(a, n)])
            start, length = a, n
    return groups


def _shrink(fields: list[Field], limit: int) -> list[Request]:
    out: list[Request] = []
    for a, n in fields:
        if out and a + n <= out[-1][0] + limit:
            addr, _, fs = out[-1]
            out[-1] = (addr, a - addr + n, [*fs, (a, n)])
        else:
            out.append((a, n, [(a, n)]))
    return out


def _registers(reqs: list[Request]) -> int:
    return sum(r[1] for r in reqs)


def _rearrange(fields: list[Field], limit: int) -> list[Request]:
    if not fields:
        return []
    best = _shrink(fields, limit)
    for i in range(1, len(fields) - 1):
        if fields[i - 1][0] + fields[i - 1][1] == fields[i][0]:
            continue
        cand = _shrink(fields[:i], limit) + _rearrange(fields[i:], limit)
        if len(cand) <= len(best) and _registers(cand) < _registers(best):
            best = cand
    return best


def telegraf_requests(fields: Iterable[Field], limit: int, strategy: str) -> list[Request]:
    plan = _shrink if strategy == "shrink" else _rearrange
    return [r for g in _touching_groups(list(fields)) for r in plan(g, limit)]
