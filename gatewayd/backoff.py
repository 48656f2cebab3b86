"""The one exponential backoff: `base * 2**attempt`, capped, optionally with full jitter.

Invariants:
- `exponential(attempt, base, cap)` is `min(cap, base * 2**attempt)` with attempt counted from
  0 (a negative attempt counts as 0): it never exceeds `cap`, never falls below `min(base, cap)`,
  and never shrinks as attempt grows; a huge attempt neither overflows nor raises;
- `full_jitter` draws uniformly from `[0, exponential(...)]` (AWS's "full jitter"), so a fleet
  that lost its broker at once does not come back at once;
- this module imports nothing of gatewayd or drivers, so both can use it without a circle.

Every retry of the gateway that doubles uses it: the uplink's reconnect (jittered) and
re-subscribe, a channel's throttle, the rebuild of a crashed driver, the restart of a crashed
task, a serial port that will not open, Modbus busy retries, the re-merge of a split read and
the OPC UA driver's reconnect.
"""

from __future__ import annotations

import random

# 2**64 times any sane base is past any cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 64


def exponential(attempt: int, base: float, cap: float) -> float:
    """`min(cap, base * 2**attempt)`; attempt counts from 0 (the first retry waits `base`)."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """A uniform draw from `[0, exponential(attempt, base, cap)]`."""
    return (rng or random).uniform(0, exponential(attempt, base, cap))
