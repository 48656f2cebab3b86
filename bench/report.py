"""Markdown summary, one-line progress and PNG plots for a scorecard run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# figure key, label, unit, goal (text), goal check
GOALS: dict[str, list[tuple[str, str, str, str, Any]]] = {
    "p100": [
        ("delivered_per_s", "delivered readings/s", "/s", "", None),
        ("cpu_us_per_reading", "CPU per reading", "µs", "≤ 15 µs", lambda v: v <= 15),
        ("latency_p50_ms", "latency p50", "ms", "", None),
        ("latency_p99_ms", "latency p99", "ms", "≤ 50 ms", lambda v: v <= 50),
        ("rss_mb", "RSS", "MB", "≤ 40 MB", lambda v: v <= 40),
    ],
    "p1000": [
        ("delivered_per_s", "delivered readings/s", "/s", "", None),
        ("cpu_us_per_reading", "CPU per reading", "µs", "≤ 10 µs", lambda v: v <= 10),
        ("latency_p50_ms", "latency p50", "ms", "", None),
        ("latency_p99_ms", "latency p99", "ms", "≤ 50 ms", lambda v: v <= 50),
        ("rss_mb", "RSS", "MB", "≤ 35 MB", lambda v: v <= 35),
    ],
    "idle": [
        ("cpu_pct", "CPU", "%", "", None),
        ("rss_mb", "RSS", "MB", "≤ 40 MB", lambda v: v <= 40),
    ],
    "startup": [
        ("ready_s", "run → READY", "s", "≤ 0.5 s", lambda v: v <= 0.5),
        ("first_record_s", "run → first record at the broker", "s", "", None),
    ],
    "backlog": [
        ("drain_s", "drain time", "s", "", None),
        ("drain_per_s", "drain rate", "readings/s", "", None),
        ("file_mb_full", "buffer file when full", "MB", "", None),
        ("file_mb_after_drain", "buffer file after drain", "MB", "", None),
    ],
}
FAULT_PARTS = ("broker_kill", "partition", "gateway_kill", "jwt_expiry", "disk_full")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _baseline(part: str, key: str, data: dict[str, Any]) -> tuple[str, str]:
    if part in ("p100", "p1000", "idle") and key in ("cpu_us_per_reading", "rss_mb", "cpu_pct"):
        b = data.get("baseline", {})
        if key == "cpu_pct":
            return "", ""
        base = b.get(key)
        if base:
            return f"{_fmt(base)} (naive script)", f"{data[key] / base:.2f}x"
    if part == "startup" and key == "ready_s":
        return (
            f"{_fmt(data['python_pass_s'])} s (`python3 -c pass`)",
            f"{data['ready_ratio_vs_python_pass']:.1f}x",
        )
    if part == "backlog" and key == "drain_s":
        return (
            f"{_fmt(data['raw_paho_s'])} s (raw paho QoS 1, one message per reading)",
            f"{data['raw_paho_s'] / data['drain_s']:.2f}x its speed",
        )
    return "", ""


def one_line(part: str, data: dict[str, Any]) -> str:
    if "error" in data:
        return f"ERROR {data['error']}"
    if part in FAULT_PARTS:
        return f"lost {data.get('lost')}, duplicated {data.get('duplicated')}"
    if "summary" in data:
        return str(data["summary"])
    rows = GOALS.get(part, [])
    return ", ".join(
        f"{label} {_fmt(data[k])} {unit}" for k, label, unit, _, _ in rows if k in data
    )


def markdown(run: dict[str, Any], folder: Path, stamp: str) -> str:
    lines = [
        f"# gatewayd scorecard {run['stamp']} ({run['mode']})",
        "",
        f"Machine: {run['machine']}. Reproduce: `{run['command']}`.",
        "",
        "| part | figure | value | goal | baseline (same run) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for part, data in run["parts"].items():
        if "error" in data:
            lines.append(f"| {part} | error | {data['error']} | | | |")
            continue
        if part in FAULT_PARTS:
            lines.append(
                f"| {part} | {data['fault']} | lost {data['lost']} of {data['stored']},"
                f" duplicated {data['duplicated']} | {'counted' if 'evicted' in data else '0'} lost"
                " | | |"
            )
            if "evicted" in data:
                lines.append(
                    f"| {part} | evicted, by lane/reason | {data['evicted']}; every loss counted:"
                    f" {data['every_loss_counted']}; alarms evicted {data['alarms_evicted']},"
                    f" received {data['alarms_received']} | every loss counted, no alarm lost"
                    " | | |"
                )
            for k, v in data.items():
                if k.endswith("_s"):
                    goal = "≤ 5 s median" if k == "first_puback_after_return_s" else ""
                    lines.append(f"| {part} | {k.replace('_', ' ')} | {_fmt(v)} s | {goal} | | |")
            continue
        # Parts that lay out their own rows: (figure, value, goal, baseline, ratio).
        for row in data.get("rows", []):
            lines.append(f"| {part} | " + " | ".join(row) + " |")
        for key, label, unit, goal, check in GOALS.get(part, []):
            if key not in data:
                continue
            v = data[key]
            mark = "" if check is None else (" ✓" if check(v) else " ✗")
            base, ratio = _baseline(part, key, data)
            lines.append(
                f"| {part} | {label} | {_fmt(v)} {unit}{mark} | {goal} | {base} | {ratio} |"
            )
    storm = run["parts"].get("storm", {})
    for row in storm.get("policies", []):
        cap = row["broker_capacity_per_s"]
        lines.append(
            f"| storm | {row['policy']}{f', broker takes {cap}/s' if cap else ''} | peak "
            f"{row['peak_attempts_per_s']}/s ({row['peak_share']:.0%} of 1,000), 95 % back "
            f"{row['t95_s']:.1f} s | {'small peak share' if row is storm['policies'][0] else ''}"
            " | | |"
        )
    plots = _plots(run, folder, stamp)
    if plots:
        lines += ["", *[f"![{name}]({name})" for name in plots]]
    return "\n".join(lines) + "\n"


def _plots(run: dict[str, Any], folder: Path, stamp: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    for part in ("p100", "p1000"):
        data = run["parts"].get(part, {})
        if not data.get("timeline"):
            continue
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        lt = data.get("latency_timeline", [])
        ax1.plot([t for t, _ in lt], [v for _, v in lt], ".", markersize=2)
        ax1.set_ylabel("latency ms")
        ax1.set_title(f"{part}: latency (reading stamp → subscriber) and gateway CPU")
        tl = data["timeline"]
        ax2.plot([s["t"] for s in tl], [s["cpu_pct"] for s in tl])
        ax2.set_ylabel("CPU %")
        ax2.set_xlabel("seconds")
        name = f"{stamp}-{part}.png"
        fig.tight_layout()
        fig.savefig(folder / name, dpi=80)
        plt.close(fig)
        out.append(name)
    return out
