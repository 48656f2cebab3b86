"""Rules engine cost per reading, against a plain Python function doing the same, in one run.

    .venv/bin/python bench/bench_rules.py [--quick]

Each case feeds the same readings (100 points, one reading per point per second, values on a
random walk, in polls of 100 readings) to a fresh engine and to a hand-written function that
produces the same records; outputs are compared so the baseline does the same work. Figures are
the best of several runs, in microseconds per reading. Goals: pass-through <= 2 us, a typical
chain <= 10 us.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable
from typing import Any

from gatewayd.config import load
from gatewayd.reading import Lane, Quality, Reading, Record
from gatewayd.rules import Rules

POINTS = [f"pump-{i}/pressure" for i in range(100)]
Batches = list[list[Reading]]


def readings(rounds: int) -> Batches:
    rnd = random.Random(7)
    level = {p: 50.0 for p in POINTS}
    batches = []
    for k in range(rounds):
        batch = []
        for p in POINTS:
            level[p] += rnd.gauss(0, 0.4)
            ts = 1_764_000_000_000 + k * 1000
            if rnd.random() < 0.01:  # now and then a device times out
                batch.append(Reading(p, ts, None, Quality.BAD, "timeout"))
            else:
                batch.append(Reading(p, ts, round(level[p], 3)))
        batches.append(batch)
    return batches


def rules_of(steps: str) -> Rules:
    text = '[uplink.auth]\nkind = "none"\n[[rules]]\nname = "r"\npoints = ["pump-*/pressure"]\n'
    return Rules(load(text + steps).rules)


def pass_through(batch: list[Reading]) -> list[Record]:
    return [Record(r.point, r.ts_ms, r.value, r.quality, r.reason) for r in batch]


def make_deadband(band: float) -> Callable[[list[Reading]], list[Record]]:
    last: dict[str, Any] = {}

    def deadband(batch: list[Reading]) -> list[Record]:
        out = []
        for r in batch:
            v = r.value
            if r.quality is Quality.BAD:
                last.pop(r.point, None)
            else:
                prev = last.get(r.point)
                if prev is not None and (v == prev or abs(v - prev) < band):  # type: ignore[operator]
                    continue
                last[r.point] = v
            out.append(Record(r.point, r.ts_ms, v, r.quality, r.reason))
        return out

    return deadband


def expression(batch: list[Reading]) -> list[Record]:
    out = []
    for r in batch:
        v = r.value
        if r.quality is not Quality.BAD:
            v = float(v) * 0.1 + 2.0  # type: ignore[arg-type]
        out.append(Record(r.point, r.ts_ms, v, r.quality, r.reason))
    return out


def make_window(seconds: int) -> Callable[[list[Reading]], list[Record]]:
    ms = seconds * 1000
    state: dict[str, list[Any]] = {}  # point -> [start, sum, count]

    def window(batch: list[Reading]) -> list[Record]:
        out = []
        for r in batch:
            start = r.ts_ms - r.ts_ms % ms
            s = state.get(r.point)
            if s is None:
                s = state[r.point] = [start, 0.0, 0, 0]
            elif s[0] != start:
                if not s[3]:
                    out.append(Record(f"{r.point}/mean", s[0], s[1] / s[2]))
                elif s[2]:
                    q, why = Quality.UNCERTAIN, "some_bad_readings"
                    out.append(Record(f"{r.point}/mean", s[0], s[1] / s[2], q, why))
                else:
                    q, why = Quality.BAD, "no_good_readings"
                    out.append(Record(f"{r.point}/mean", s[0], None, q, why))
                s[:] = [start, 0.0, 0, 0]
            if r.quality is Quality.BAD:
                s[3] += 1
            else:
                s[1] += r.value  # type: ignore[operator]
                s[2] += 1
        return out

    return window


def make_alarm(high: float, hyst: float) -> Callable[[list[Reading]], list[Record]]:
    active: dict[str, bool] = {}

    def alarm(batch: list[Reading]) -> list[Record]:
        out = []
        for r in batch:
            v = r.value
            if r.quality is not Quality.BAD:
                on = active.get(r.point, False)
                if not on and v >= high:  # type: ignore[operator]
                    active[r.point] = True
                    out.append(
                        Record(
                            r.point, r.ts_ms, v, Quality.GOOD, "raise:r.high:warning", Lane.ALARM
                        )
                    )
                elif on and v < high - hyst:  # type: ignore[operator]
                    active[r.point] = False
                    out.append(
                        Record(
                            r.point, r.ts_ms, v, Quality.GOOD, "clear:r.high:warning", Lane.ALARM
                        )
                    )
            out.append(Record(r.point, r.ts_ms, v, r.quality, r.reason))
        return out

    return alarm


def make_chain() -> Callable[[list[Reading]], list[Record]]:
    """quality drop, scale, deadband 0.05, alarm, route to a subfolder."""
    last: dict[str, float] = {}
    active: dict[str, bool] = {}

    def chain(batch: list[Reading]) -> list[Record]:
        out = []
        for r in batch:
            if r.quality is Quality.BAD:
                continue
            v = r.value * 0.1  # type: ignore[operator]
            prev = last.get(r.point)
            if prev is not None and (v == prev or abs(v - prev) < 0.05):
                continue
            last[r.point] = v
            on = active.get(r.point, False)
            if not on and v >= 5.5:
                active[r.point] = True
                out.append(
                    Record(r.point, r.ts_ms, v, Quality.GOOD, "raise:r.high:warning", Lane.ALARM)
                )
            elif on and v < 5.4:
                active[r.point] = False
                out.append(
                    Record(r.point, r.ts_ms, v, Quality.GOOD, "clear:r.high:warning", Lane.ALARM)
                )
            out.append(Record(r.point, r.ts_ms, v, r.quality, r.reason, Lane.TELEMETRY, "fast"))
        return out

    return chain


CASES: list[tuple[str, str, Callable[[], Callable[[list[Reading]], list[Record]]]]] = [
    ("pass-through", "", lambda: pass_through),
    (
        "deadband",
        '[[rules.steps]]\nkind = "deadband"\nabsolute = 0.5\n',
        lambda: make_deadband(0.5),
    ),
    (
        "expression",
        '[[rules.steps]]\nkind = "expr"\nexpr = "value * 0.1 + 2"\n',
        lambda: expression,
    ),
    ("window 10 s", '[[rules.steps]]\nkind = "window"\nseconds = 10\n', lambda: make_window(10)),
    (
        "alarm",
        '[[rules.steps]]\nkind = "alarm"\nhigh = 55\nhysteresis = 1\n',
        lambda: make_alarm(55.0, 1.0),
    ),
    (
        "typical chain (5 steps)",
        '[[rules.steps]]\nkind = "quality"\n'
        '[[rules.steps]]\nkind = "scale"\nfactor = 0.1\n'
        '[[rules.steps]]\nkind = "deadband"\nabsolute = 0.05\n'
        '[[rules.steps]]\nkind = "alarm"\nhigh = 5.5\nhysteresis = 0.1\n'
        '[[rules.steps]]\nkind = "route"\nsubfolder = "fast"\n',
        make_chain,
    ),
]


def best_of(
    repeats: int, batches: Batches, make: Callable[[], Callable[[list[Reading]], list[Record]]]
) -> tuple[float, list[Record]]:
    best = float("inf")
    out: list[Record] = []
    for _ in range(repeats):
        fn = make()  # fresh state each run
        out = []
        t0 = time.perf_counter()
        for batch in batches:
            out += fn(batch)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer readings and runs")
    args = ap.parse_args()
    rounds, repeats = (50, 3) if args.quick else (300, 7)
    batches = readings(rounds)
    n = rounds * len(POINTS)
    print(
        f"rules bench: {n} readings per run, best of {repeats}; "
        f"python {platform.python_version()}, "
        f"{platform.machine()}, {_cpu()}"
    )
    print(f"{'case':<26}{'rules':>10}{'plain fn':>11}{'ratio':>8}  records")
    for name, steps, plain in CASES:
        t_base, want = best_of(repeats, batches, plain)

        def engine(steps: str = steps) -> Callable[[list[Reading]], list[Record]]:
            return rules_of(steps).process if steps else Rules().process

        t_rules, got = best_of(repeats, batches, engine)
        if got != want:
            raise SystemExit(
                f"{name}: the engine and the plain function disagree "
                f"({len(got)} vs {len(want)} records)"
            )
        us, base_us = t_rules / n * 1e6, t_base / n * 1e6
        print(f"{name:<26}{us:>8.2f}us{base_us:>9.2f}us{us / base_us:>7.2f}x  {len(got)}")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    main()
