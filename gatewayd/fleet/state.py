"""A gateway's state document (gatewayd/daemon.py `_state`) as the fleet reads it.

Invariants:
- reading never raises: a field missing or of the wrong type (an older gatewayd, a stranger on
  the topic) reads as None / 0, so one odd gateway cannot stop `fleet status` or a rollout;
- `names()` is the whole vocabulary of `--require`: numbers only, the expression language's rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .broker import Seen


@dataclass(frozen=True)
class View:
    id: str
    labels: dict[str, str]
    config_version: int | None
    health: str
    uplink_host: str | None
    devices_good: int  # devices up with no bad point
    devices_bad: int  # devices down, or with a bad point
    points_good: int
    points_bad: int
    buffer_depth: int | None
    buffer_oldest_ts: int | None  # ms
    outcome: dict[str, Any] | None  # the last remote-config outcome: version, status, reason, ts
    recent: list[dict[str, Any]]  # the recent outcomes, oldest first, ending with `outcome`
    seen_ts: float  # wall seconds: the document's own stamp, else when it reached fleet
    counters: dict[str, float]
    software_version: str | None = None  # the gatewayd release running (`software.version`)
    update: dict[str, Any] | None = None  # the last update's outcome: id, version, status, reason
    update_step: dict[str, Any] | None = None  # the update under way: version, step

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.seen_ts)

    def stale(self, after_s: float, now: float | None = None) -> bool:
        return self.age_s(now) > after_s

    @property
    def last_rollback(self) -> dict[str, Any] | None:
        return next((o for o in reversed(self.recent) if o.get("status") == "rolled_back"), None)

    def outcome_of(self, version: int) -> dict[str, Any] | None:
        """The newest outcome the gateway reported for `version`, if it is still listed."""
        return next((o for o in reversed(self.recent) if o.get("version") == version), None)

    def matches(self, select: dict[str, str]) -> bool:
        return all(
            (self.id if key == "id" else self.labels.get(key)) == value
            for key, value in select.items()
        )

    def names(self) -> dict[str, float]:
        """What `--require` may name: numbers from the document (missing ones read as 0)."""
        out = {
            "config_version": float(self.config_version or 0),
            "devices_good": float(self.devices_good),
            "devices_bad": float(self.devices_bad),
            "points_good": float(self.points_good),
            "points_bad": float(self.points_bad),
            "buffer_depth": float(self.buffer_depth or 0),
            "buffer_oldest_age_s": self.buffer_oldest_age_s(),
            "healthy": 1.0 if self.health == "ok" else 0.0,
        }
        for name in REQUIRE_COUNTERS:
            out[name] = float(self.counters.get(name, 0))
        return out

    def refused_note(self) -> str:
        """For a gateway that did not answer: its broker refusing its subscriptions is a likely
        why (a refused config or commands subscription hears nothing; NATS does so for minutes
        after losing a node)."""
        n = int(self.counters.get("uplink_subscribe_refused", 0))
        if not n:
            return ""
        return (
            f"; its broker refused {n} of its subscriptions since it started "
            "(uplink_subscribe_refused in its log: a refused subscription hears no push)"
        )

    def buffer_oldest_age_s(self, now: float | None = None) -> float:
        if not self.buffer_depth or self.buffer_oldest_ts is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.buffer_oldest_ts / 1000)


# Counters of the state document that --require may name as they are.
REQUIRE_COUNTERS = (
    "acked_records",
    "buffered_records",
    "driver_crashes",
    "poll_failures",
    "rules_dropped",
    "uplink_reconnects",
)
NAMES = (
    "config_version",
    "devices_good",
    "devices_bad",
    "points_good",
    "points_bad",
    "buffer_depth",
    "buffer_oldest_age_s",
    "healthy",
    *REQUIRE_COUNTERS,
)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def read(gateway: str, seen: Seen) -> View:
    d = seen.doc
    labels_raw = d.get("labels")
    labels = {str(k): str(v) for k, v in labels_raw.items()} if isinstance(labels_raw, dict) else {}
    devices_raw = d.get("devices")
    devices: dict[str, Any] = devices_raw if isinstance(devices_raw, dict) else {}
    dev_good = dev_bad = pts_good = pts_bad = 0
    for dev in devices.values():
        if not isinstance(dev, dict):
            continue
        good = _int(dev.get("good")) or 0
        bad_raw = dev.get("bad")
        bad_map: dict[str, Any] = bad_raw if isinstance(bad_raw, dict) else {}
        bad = sum(len(v) for v in bad_map.values() if isinstance(v, list))
        pts_good += good
        pts_bad += bad
        if dev.get("status") != "up" or bad:
            dev_bad += 1
        else:
            dev_good += 1
    outcome = d.get("config") if isinstance(d.get("config"), dict) else None
    recent_raw = d.get("config_recent")
    recent = [o for o in recent_raw if isinstance(o, dict)] if isinstance(recent_raw, list) else []
    if outcome is not None and (not recent or recent[-1] != outcome):
        recent.append(outcome)
    ts = _int(d.get("ts"))
    counters_raw = d.get("counters")
    counters = (
        {str(k): float(v) for k, v in counters_raw.items() if isinstance(v, int | float)}
        if isinstance(counters_raw, dict)
        else {}
    )
    host = d.get("uplink_host")
    sw_raw = d.get("software")
    sw: dict[str, Any] = sw_raw if isinstance(sw_raw, dict) else {}
    running, update, step = sw.get("version"), sw.get("update"), sw.get("update_step")
    return View(
        id=gateway,
        labels=labels,
        config_version=_int(d.get("config_version")),
        health=str(d.get("health", "?")),
        uplink_host=host if isinstance(host, str) else None,
        devices_good=dev_good,
        devices_bad=dev_bad,
        points_good=pts_good,
        points_bad=pts_bad,
        buffer_depth=_int(d.get("buffer_depth")),
        buffer_oldest_ts=_int(d.get("buffer_oldest_ts")),
        outcome=outcome,
        recent=recent,
        # A live message is as fresh as its arrival; a retained one is as old as its stamp.
        seen_ts=ts / 1000 if ts is not None and seen.retained else seen.at,
        counters=counters,
        software_version=running if isinstance(running, str) else None,
        update=update if isinstance(update, dict) else None,
        update_step=step if isinstance(step, dict) else None,
    )
