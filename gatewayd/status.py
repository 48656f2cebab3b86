"""`gatewayd status`: one screen about the running daemon, read from its metrics endpoint.

The endpoint is the only interface: what a human sees here is what Prometheus scrapes, so the two
cannot disagree. A device that is down shows as `DOWN for <age> (<cause>)` from the gauge
`device_down_since_timestamp_seconds{device, cause}`: the cause in words (`connection refused`),
not a reason code of the last poll.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


class ParseError(ValueError):
    pass


@dataclass
class Samples:
    values: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def get(self, name: str, default: float = 0.0, **labels: str) -> float:
        return self.values.get(name, {}).get(tuple(sorted(labels.items())), default)

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        for labels, v in self.values.get(name, {}).items():
            yield dict(labels), v

    def total(self, name: str) -> float:
        return sum(self.values.get(name, {}).values())


def parse(text: str) -> Samples:
    """Prometheus text format (0.0.4) → samples; raises ParseError naming the bad line."""
    out = Samples()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ParseError(f"line {n}: not a sample: {line!r}")
        name, raw_labels, raw_value = m.groups()
        labels: list[tuple[str, str]] = []
        if raw_labels:
            at = 0
            for lm in _LABEL.finditer(raw_labels):
                if lm.start() != at:
                    raise ParseError(f"line {n}: bad labels: {raw_labels!r}")
                value = lm.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                labels.append((lm.group(1), value))
                at = lm.end()
            if at != len(raw_labels):
                raise ParseError(f"line {n}: bad labels: {raw_labels!r}")
        try:
            value_f = float(raw_value)
        except ValueError:
            raise ParseError(f"line {n}: bad value {raw_value!r}") from None
        out.values.setdefault(name, {})[tuple(sorted(labels))] = value_f
    return out


def fetch(host: str, port: int, timeout: float = 3.0) -> str:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {body.strip()}")
        return body
    finally:
        conn.close()


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render(s: Samples, now: float | None = None) -> str:
    now = time.time() if now is None else now
    g = "gatewayd_"
    lines: list[str] = []
    version = next((lab.get("version", "?") for lab, _ in s.series(g + "info")), "?")
    started = s.get(g + "start_time_seconds")
    lines.append(
        f"gatewayd {version}, up {_age(now - started) if started else '?'}, "
        f"config version {s.get(g + 'config_version'):.0f}"
        + ("" if s.get(g + "clock_plausible", 1.0) else ", CLOCK NOT SET (uplink held)")
    )
    if s.get(g + "uplink_connected"):
        up = "connected"
    else:
        reasons = [lab.get("reason", "") for lab, _ in s.series(g + "uplink_last_error")]
        up = "OFFLINE" + (f" ({reasons[0]})" if reasons else "")
    lines.append(
        f"uplink   {up}; published {s.total(g + 'published_records_total'):.0f}, "
        f"acked {s.total(g + 'acked_records_total'):.0f}, "
        f"reconnects {s.total(g + 'uplink_reconnects_total'):.0f}"
    )
    evicted = ", ".join(
        f"{lab.get('lane')}/{lab.get('reason')} {v:.0f}"
        for lab, v in sorted(s.series(g + "buffer_evicted_records_total"), key=str)
        if v
    )
    depth = s.get(g + "buffer_depth")
    oldest = f", oldest {_age(s.get(g + 'buffer_oldest_age_seconds'))}" if depth else ""
    left = s.get(g + "buffer_hours_left", float("inf"))
    room = "" if left == float("inf") else f"; room for {_age(left * 3600)} at this rate"
    lines.append(
        f"buffer   {depth:.0f} records, {_size(s.get(g + 'buffer_bytes'))}{oldest}; "
        f"evicted {evicted or 'none'}{room}"
    )
    lines.append(
        f"rules    dropped {s.total(g + 'rules_dropped_total'):.0f}; "
        f"config applied {s.get(g + 'config_outcomes_total', status='applied'):.0f}, "
        f"rejected {s.get(g + 'config_outcomes_total', status='rejected'):.0f}, "
        f"rolled back {s.get(g + 'config_outcomes_total', status='rolled_back'):.0f}"
    )
    devices = sorted(lab["device"] for lab, _ in s.series(g + "polls_total") if "device" in lab)
    lines.append(f"devices  {len(devices)}")
    width = max((len(d) for d in devices), default=0)
    for dev in devices:
        last = s.get(g + "device_last_poll_timestamp_seconds", -1.0, device=dev)
        when = "never polled" if last < 0 else f"last poll {_age(max(0.0, now - last))} ago"
        good = s.get(g + "device_last_poll_good", device=dev)
        bad = s.get(g + "device_last_poll_bad", device=dev)
        reasons = sorted(
            lab["reason"]
            for lab, _ in s.series(g + "device_last_bad_reason")
            if lab.get("device") == dev
        )
        quality = f"{good:.0f} good, {bad:.0f} bad" + (
            f" ({', '.join(reasons)})" if reasons else ""
        )
        for lab, since in s.series(g + "device_down_since_timestamp_seconds"):
            if lab.get("device") == dev:
                quality = f"DOWN for {_age(max(0.0, now - since))} ({lab.get('cause', '?')})"
        skipped = sum(
            v for lab, v in s.series(g + "polls_skipped_total") if lab.get("device") == dev
        )
        polls = s.get(g + "polls_total", device=dev)
        failed = s.get(g + "poll_failures_total", device=dev)
        crashes = s.get(g + "driver_crashes_total", device=dev)
        lines.append(
            f"  {dev:<{width}}  {when}, {quality}; "
            f"polls {polls:.0f} ({failed:.0f} failed, {skipped:.0f} skipped), crashes {crashes:.0f}"
        )
    return "\n".join(lines) + "\n"
