"""Signal generators: functions of time (seconds since start) that feed simulated registers."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

Signal = Callable[[float], float]


def constant(value: float) -> Signal:
    return lambda t: value


def counter(step: float = 1.0, period_s: float = 1.0) -> Signal:
    return lambda t: step * math.floor(t / period_s)


def ramp(lo: float, hi: float, period_s: float) -> Signal:
    return lambda t: lo + (hi - lo) * ((t % period_s) / period_s)


def sine(mean: float, amplitude: float, period_s: float) -> Signal:
    return lambda t: mean + amplitude * math.sin(2 * math.pi * t / period_s)


def random_walk(start: float, step: float, lo: float, hi: float, seed: int = 0) -> Signal:
    rng = random.Random(seed)
    state = {"v": start, "t": 0.0}

    def f(t: float) -> float:
        while state["t"] < t:
            state["v"] = min(hi, max(lo, state["v"] + rng.uniform(-step, step)))
            state["t"] += 1.0
        return state["v"]

    return f
