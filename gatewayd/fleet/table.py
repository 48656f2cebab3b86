"""`fleet status`: one line per gateway and a roll-up, or the same as JSON for scripts."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from .state import View


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _outcome(o: dict[str, Any] | None, width: int = 60) -> str:
    if not o:
        return "-"
    text = f"v{o.get('version')} {o.get('status')}"
    if o.get("status") != "applied" and o.get("reason"):
        text += f": {o.get('reason')}"
    return text if len(text) <= width else text[: width - 1] + "…"


def _software(x: dict[str, Any]) -> str:
    """The running release; an update under way, or the last one that did not apply, after it."""
    text = x["software_version"] or "-"
    step, last = x["update_step"] or {}, x["last_update"] or {}
    if step:
        text += f" (->{step.get('version')} {step.get('step')})"
    elif last and last.get("status") != "applied":
        text += f" ({last.get('version')} {last.get('status')})"
    return text


def rows(views: list[View], stale_after_s: float, now: float) -> list[dict[str, Any]]:
    out = []
    for v in views:
        stale = v.stale(stale_after_s, now)
        out.append(
            {
                "id": v.id,
                "labels": v.labels,
                "config_version": v.config_version,
                "software_version": v.software_version,
                "last_update": v.update,
                "update_step": v.update_step,
                "health": v.health,
                "uplink": "stale" if stale else "connected",
                "uplink_host": v.uplink_host,
                "devices_good": v.devices_good,
                "devices_bad": v.devices_bad,
                "buffer_depth": v.buffer_depth,
                "buffer_oldest_age_s": round(v.buffer_oldest_age_s(now), 1),
                "last_outcome": v.outcome,
                "last_rollback": v.last_rollback,
                "last_seen_age_s": round(v.age_s(now), 1),
                "stale": stale,
            }
        )
    return out


def render_json(views: list[View], stale_after_s: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    r = rows(views, stale_after_s, now)
    return json.dumps({"gateways": r, "summary": summary(r)}, indent=2, sort_keys=True) + "\n"


def summary(r: list[dict[str, Any]]) -> dict[str, Any]:
    versions = Counter(str(x["config_version"]) for x in r)
    software = Counter(str(x["software_version"]) for x in r)
    return {
        "gateways": len(r),
        "stale": sum(1 for x in r if x["stale"]),
        "healthy": sum(1 for x in r if x["health"] == "ok" and not x["stale"]),
        "config_versions": dict(sorted(versions.items())),
        "software_versions": dict(sorted(software.items())),
        "devices_good": sum(x["devices_good"] for x in r),
        "devices_bad": sum(x["devices_bad"] for x in r),
        "buffered": sum(x["buffer_depth"] or 0 for x in r),
        "rolled_back": sum(1 for x in r if x["last_rollback"]),
    }


def render_text(views: list[View], stale_after_s: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    r = rows(views, stale_after_s, now)
    head = ["GATEWAY", "LABELS", "SOFTWARE", "CFG", "HEALTH", "UPLINK", "DEVICES ok/bad", "BUFFER"]
    head += ["LAST CONFIG", "SEEN"]
    lines = [head]
    for x in r:
        buf = "-" if x["buffer_depth"] is None else str(x["buffer_depth"])
        if x["buffer_depth"]:
            buf += f" (oldest {_age(x['buffer_oldest_age_s'])})"
        up = x["uplink"] + (f" {x['uplink_host']}" if x["uplink_host"] and not x["stale"] else "")
        lines.append(
            [
                str(x["id"]),
                ",".join(f"{k}={v}" for k, v in sorted(x["labels"].items())) or "-",
                _software(x),
                "-" if x["config_version"] is None else str(x["config_version"]),
                str(x["health"]),
                up,
                f"{x['devices_good']}/{x['devices_bad']}",
                buf,
                _outcome(x["last_outcome"]),
                _age(x["last_seen_age_s"]) + (" STALE" if x["stale"] else ""),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    s = summary(r)
    versions = ", ".join(f"v{k}: {n}" for k, n in s["config_versions"].items()) or "none"
    releases = ", ".join(f"{k}: {n}" for k, n in s["software_versions"].items()) or "none"
    text.append("")
    text.append(
        f"{s['gateways']} gateways: {s['healthy']} healthy, {s['stale']} stale "
        f"(no state for {stale_after_s:g} s); gatewayd {releases}; config {versions}; "
        f"devices {s['devices_good']} good, "
        f"{s['devices_bad']} bad; buffered {s['buffered']} records; "
        f"last config rolled back on {s['rolled_back']}"
    )
    return "\n".join(text) + "\n"
