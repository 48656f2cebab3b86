"""Fleet reconnect storm, in simulated time: N gateways lose their broker, it comes back.

Compares the uplink's full-jitter backoff (random(0, min(cap, base * 2^n)), the defaults from
UplinkConfig) with fixed retry steps of 5, 10 and 20 s, and Cloud IoT Core's advice
(min(2^n + random(0, 1), 64)). Every gateway notices the outage within `notice_s` of its start
(keepalive, RST); an attempt while the broker is down fails, one after it succeeds, unless
`--capacity` limits how many connections the broker accepts per second.

Reports the peak of connection attempts per second that the returning broker sees (as a share
of the fleet), the time until 95 % (and 50 %) of the fleet is back, and the attempts made.

    .venv/bin/python bench/storm.py [--clients 1000] [--outage 60] [--capacity N]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gatewayd.config import UplinkConfig
from gatewayd.uplink import full_jitter

Policy = Callable[[int, random.Random], float]  # (failed attempts so far, rng) -> delay


@dataclass(frozen=True)
class Storm:
    name: str
    peak_per_s: int  # attempts in the busiest second after the broker returned
    t50_s: float  # after the broker returned
    t95_s: float
    attempts: int


def jitter(base: float, cap: float) -> Policy:
    return lambda n, rng: full_jitter(n, base, cap, rng)


def fixed(step: float) -> Policy:
    return lambda n, rng: step


def iot_core(n: int, rng: random.Random) -> float:
    return min(2.0**n + rng.uniform(0, 1), 64.0)


def simulate(
    name: str,
    policy: Policy,
    clients: int = 1000,
    outage_s: float = 60.0,
    notice_s: float = 1.0,
    capacity: int | None = None,
    seed: int = 1,
) -> Storm:
    rng = random.Random(seed)
    heap = [(rng.uniform(0, notice_s) + policy(0, rng), i, 0) for i in range(clients)]
    heapq.heapify(heap)
    per_second: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    back: list[float] = []
    attempts = 0
    while heap:
        t, i, n = heapq.heappop(heap)
        attempts += 1
        second = int(t)
        if t >= outage_s:
            per_second[second] += 1
            if capacity is None or accepted[second] < capacity:
                accepted[second] += 1
                back.append(t - outage_s)
                continue
        heapq.heappush(heap, (t + policy(n + 1, rng), i, n + 1))
    back.sort()
    return Storm(
        name,
        max(per_second.values()),
        back[len(back) // 2],
        back[int(0.95 * len(back)) - 1],
        attempts,
    )


def policies() -> list[tuple[str, Policy]]:
    d = UplinkConfig()
    return [
        (
            f"full jitter {d.backoff_base_s:g}/{d.backoff_cap_s:g} s",
            jitter(d.backoff_base_s, d.backoff_cap_s),
        ),
        ("full jitter 1/60 s", jitter(1.0, 60.0)),
        ("Cloud IoT Core 2^n+rand, 64 s", iot_core),
        ("fixed 5 s", fixed(5.0)),
        ("fixed 10 s", fixed(10.0)),
        ("fixed 20 s", fixed(20.0)),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--outage", type=float, default=60.0)
    p.add_argument("--capacity", type=int, default=None, help="connections/s the broker accepts")
    p.add_argument("--quick", action="store_true", help="(already quick; accepted for symmetry)")
    a = p.parse_args()
    cap = f", broker accepts {a.capacity}/s" if a.capacity else ""
    print(f"{a.clients} gateways, {a.outage:g} s outage{cap} (simulated time)")
    print(f"{'policy':32} {'peak/s':>7} {'share':>6} {'t50':>6} {'t95':>6} {'attempts':>8}")
    rows = [simulate(n, pol, a.clients, a.outage, capacity=a.capacity) for n, pol in policies()]
    for r in rows:
        print(
            f"{r.name:32} {r.peak_per_s:7d} {r.peak_per_s / a.clients:6.0%} "
            f"{r.t50_s:5.1f}s {r.t95_s:5.1f}s {r.attempts:8d}"
        )
    ours = rows[0]
    worst_fixed = max(rows[3:], key=lambda r: r.peak_per_s)
    print(
        f"peak vs {worst_fixed.name}: {ours.peak_per_s / worst_fixed.peak_per_s:.2f}x; "
        f"20 s outage, median back after "
        f"{simulate('', policies()[0][1], a.clients, 20.0).t50_s:.1f} s with the defaults"
    )


if __name__ == "__main__":
    main()
