"""A/B of two builds of the daemon on one steady profile, interleaved round by round, beside the
naive poll-and-publish script measured in the same run (the machine is shared: only same-run
ratios mean anything).

    .venv/bin/python bench/ab.py BASE_SITE PROFILE [rounds] [seconds] [sync] [NEW_SITE]

BASE_SITE is a folder holding a `gatewayd` package (a baseline commit laid out as installed, see
bench/results/PROFILE.md), or a commit of this repository, laid out so in a temporary folder;
the other build is NEW_SITE, given the same way, or else this worktree (which must then not
change while the A/B runs). PROFILE is p100 or p1000; sync "normal" or "full" ("-": the
default). Prints one line per run with the 1-minute load average, and the median with the
spread (min-max) per build, the ratio new/base and the range of load averages.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import profiles

SHAPES = {"p100": (1, 100, 100), "p1000": (10, 100, 1000)}
KEYS = ("cpu_us_per_reading", "latency_p99_ms", "write_bytes_per_reading", "delivered_per_s")


def site_of(ref: str) -> Path:
    """A folder whose `gatewayd` package is the commit `ref` as installed (or `ref` itself)."""
    if Path(ref).is_dir():
        return Path(ref)
    root = Path(__file__).resolve().parent.parent
    out = Path(tempfile.mkdtemp(prefix=f"ab-{ref[:12]}-"))
    tree = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "gatewayd", "buffer", "drivers", "config"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=tree, check=True)
    for part in ("buffer", "drivers", "config"):  # the installed names: gatewayd.buffer, ...
        shutil.move(out / part, out / "gatewayd" / part)
    return out


def main() -> None:
    base = site_of(sys.argv[1])
    name = sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8
    sync = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
    new = site_of(sys.argv[6]) if len(sys.argv) > 6 else None
    extra = f'[buffer]\nsync = "{sync}"\n' if sync else ""
    devices, points, interval = SHAPES[name]
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": [], "naive": [], "naive_poll": []}
    for i in range(rounds):
        order = [("base", base), ("new", new)] if i % 2 == 0 else [("new", new), ("base", base)]
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
            r["load1"] = os.getloadavg()[0]
            runs[label].append(r)
            print(label, json.dumps({k: round(r[k], 2) for k in (*KEYS, "load1")}), flush=True)
    summary: dict[str, Any] = {
        "profile": name,
        "rounds": rounds,
        "seconds": seconds,
        "sync": sync,
        "base": str(base),
        "new": str(new or "worktree"),
    }
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
    loads = [r["load1"] for label in ("base", "new") for r in runs[label]]
    summary["load1"] = (round(min(loads), 1), round(max(loads), 1))
    summary["cpu_ratio_new_over_base"] = (
        round(statistics.median(ratios), 3),
        round(min(ratios), 3),
        round(max(ratios), 3),
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
