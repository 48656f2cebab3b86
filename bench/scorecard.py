"""The scorecard: the figures users compare gateways by, in one command (`bench/run`).

Writes bench/results/<stamp>.json (every figure), <stamp>.md (the summary table with baseline
ratios) and PNG plots of latency and CPU over time. `--quick` runs every part shortly (under
3 minutes); `--only PART` runs one part.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import backlog
import faults
import mst
import profiles
import report
import wire
from harness import compiled_sources

RESULTS = Path(__file__).parent / "results"
SLOW_PARTS = ("jwt_expiry", "mst")  # left out of --quick unless named with --only


def parts(quick: bool) -> dict[str, Callable[[], Any]]:
    q = quick
    return {
        "p100": lambda: profiles.steady("p100", 1, 100, 100, 8 if q else 60),
        "p1000": lambda: profiles.steady("p1000", 10, 100, 1000, 8 if q else 60),
        "idle": lambda: profiles.steady("idle", 10, 100, 10_000, 20 if q else 120, warmup=1),
        "startup": lambda: profiles.startup(3 if q else 7),
        "backlog": lambda: backlog.backlog(50_000 if q else 1_000_000),
        "broker_kill": lambda: faults.broker_kill(5 if q else 20),
        "partition": lambda: faults.partition(5 if q else 30),
        "gateway_kill": faults.gateway_kill,
        # Tokens live at least 60 s (the schema's floor), so this part takes a minute even when
        # quick: --quick leaves it out unless asked for with --only jwt_expiry.
        "jwt_expiry": lambda: faults.jwt_expiry(55 if q else 130),
        "disk_full": lambda: faults.disk_full(16 if q else 60, size_mb=3 if q else 4),
        "storm": storm_part,
        "mst": lambda: mst.mst(q),
        "wire": lambda: wire.wire(q),
        "wear": lambda: profiles.wear(8 if q else 60),
    }


def storm_part() -> dict[str, Any]:
    """1,000 gateways' reconnects after a 60 s outage, in simulated time (bench/storm.py)."""
    import storm

    out: dict[str, Any] = {"clients": 1000, "outage_s": 60, "policies": []}
    for capacity in (None, 200):
        for name, policy in storm.policies():
            r = storm.simulate(name, policy, 1000, 60.0, capacity=capacity)
            out["policies"].append(
                {
                    "policy": name,
                    "broker_capacity_per_s": capacity,
                    "peak_attempts_per_s": r.peak_per_s,
                    "peak_share": r.peak_per_s / 1000,
                    "t50_s": r.t50_s,
                    "t95_s": r.t95_s,
                    "attempts": r.attempts,
                }
            )
    ours = out["policies"][0]
    out["summary"] = (
        f"default full jitter: peak {ours['peak_share']:.0%} of the fleet per "
        f"second, 95 % back after {ours['t95_s']:.1f} s"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="bench/run")
    ap.add_argument("--quick", action="store_true", help="short runs of every part (< 3 min)")
    ap.add_argument("--only", action="append", help="run only this part (repeatable)")
    args = ap.parse_args()
    table = parts(args.quick)
    chosen = args.only or [p for p in table if not (args.quick and p in SLOW_PARTS)]
    unknown = set(chosen) - set(table)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from {list(table)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run: dict[str, Any] = {
        "stamp": stamp,
        "mode": "quick" if args.quick else "full",
        "command": "bench/run"
        + (" --quick" if args.quick else "")
        + "".join(f" --only {p}" for p in args.only or ()),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {_cores()} cores",
        "parts": {},
    }
    run["bytecode"] = "gatewayd's modules compiled, as installed (harness.compiled_sources)"
    t_all = time.monotonic()
    with compiled_sources():
        _run_parts(run, table, chosen, t_all)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}.json").write_text(json.dumps(run, indent=1))
    md = report.markdown(run, RESULTS, stamp)
    (RESULTS / f"{stamp}.md").write_text(md)
    print(md)
    print(f"written: bench/results/{stamp}.json, bench/results/{stamp}.md")


def _run_parts(
    run: dict[str, Any], table: dict[str, Callable[[], Any]], chosen: list[str], t_all: float
) -> None:
    for name in chosen:
        print(f"[{time.monotonic() - t_all:6.1f}s] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            run["parts"][name] = table[name]()
        except Exception as exc:  # one broken part must not lose the others' figures
            run["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(
            f"[{time.monotonic() - t_all:6.1f}s] {name} done in {time.monotonic() - t0:.0f} s: "
            f"{report.one_line(name, run['parts'][name])}",
            flush=True,
        )


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
