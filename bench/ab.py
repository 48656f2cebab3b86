"""A/B of two builds of the daemon on one steady profile, interleaved round by round, beside the
naive poll-and-publish script measured in the same run (the machine is shared: only same-run
ratios mean anything).

    .venv/bin/python bench/ab.py BASE_SITE PROFILE [rounds] [seconds] [sync]

BASE_SITE is a folder holding a `gatewayd` package (a baseline commit laid out as installed, see
bench/results/PROFILE.md); the other build is this worktree. PROFILE is p100 or p1000. Prints
one line per run and the median with the spread (min-max) per build, and the ratio new/base.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import profiles

SHAPES = {"p100": (1, 100, 100), "p1000": (10, 100, 1000)}
KEYS = ("cpu_us_per_reading", "latency_p99_ms", "write_bytes_per_reading", "delivered_per_s")


def main() -> None:
    base = Path(sys.argv[1])
    name = sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8
    sync = sys.argv[5] if len(sys.argv) > 5 else None
    extra = f'[buffer]\nsync = "{sync}"\n' if sync else ""
    devices, points, interval = SHAPES[name]
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": [], "naive": [], "naive_poll": []}
    for i in range(rounds):
        order = [("base", base), ("new", None)] if i % 2 == 0 else [("new", None), ("base", base)]
        for label, cwd in order:
            r = profiles.steady(
                name,
                devices,
                points,
                interval,
                seconds,
                cwd=cwd,
                naive=(label == "new"),
                tail=extra,
            )
            if "baseline" in r:
                runs["naive"].append(r["baseline"])
                runs["naive_poll"].append(r["baseline_per_poll"])
            runs[label].append(r)
            print(label, json.dumps({k: round(r[k], 2) for k in KEYS}), flush=True)
    summary: dict[str, Any] = {"profile": name, "rounds": rounds, "seconds": seconds, "sync": sync}
    for label in ("base", "new", "naive", "naive_poll"):
        for k in KEYS:
            vals = [r[k] for r in runs[label] if k in r]
            if vals:
                summary[f"{label}_{k}"] = (
                    round(statistics.median(vals), 2),
                    round(min(vals), 2),
                    round(max(vals), 2),
                )
    ratios = [
        n["cpu_us_per_reading"] / b["cpu_us_per_reading"]
        for n, b in zip(runs["new"], runs["base"], strict=True)
    ]
    summary["cpu_ratio_new_over_base"] = (
        round(statistics.median(ratios), 3),
        round(min(ratios), 3),
        round(max(ratios), 3),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
