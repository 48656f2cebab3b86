"""Fleet test of the backoff alone, in simulated time (bench/storm.py's model): 1,000 gateways."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent.parent / "bench"))
from storm import fixed, jitter, simulate

from gatewayd.config import UplinkConfig

DEFAULTS = UplinkConfig()
OURS = jitter(DEFAULTS.backoff_base_s, DEFAULTS.backoff_cap_s)


def test_full_jitter_spreads_the_fleet_where_fixed_steps_stampede() -> None:
    ours = simulate("ours", OURS, clients=1000, outage_s=60)
    print(f"full jitter: peak {ours.peak_per_s}/s, 95 % back after {ours.t95_s:.1f} s")
    assert ours.peak_per_s <= 250, "the returning broker sees at most a quarter of the fleet/s"
    assert ours.t95_s < 15
    for step in (5.0, 10.0, 20.0):
        r = simulate(f"fixed {step}", fixed(step), clients=1000, outage_s=60)
        print(f"fixed {step:g} s: peak {r.peak_per_s}/s, 95 % back after {r.t95_s:.1f} s")
        assert r.peak_per_s >= 900, "fixed steps bring (almost) the whole fleet in one second"


def test_full_jitter_returns_sooner_than_fixed_steps_when_the_broker_limits_accepts() -> None:
    ours = simulate("ours", OURS, clients=1000, outage_s=60, capacity=200)
    for step in (5.0, 10.0, 20.0):
        r = simulate(f"fixed {step}", fixed(step), clients=1000, outage_s=60, capacity=200)
        assert ours.t95_s < r.t95_s, (step, ours, r)


def test_default_backoff_is_back_within_5_s_median_after_a_20_s_outage() -> None:
    assert simulate("ours", OURS, clients=1000, outage_s=20).t50_s <= 5.0
