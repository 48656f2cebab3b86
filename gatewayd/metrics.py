"""Counters, gauges and histograms for every stage, and the process's own figures, rendered as
Prometheus text (0.0.4).

Invariants:
- every family rendered has a `# HELP` and a `# TYPE` line; the text of each gatewayd family is
  in `HELP` (a family missing there is rendered with a placeholder that names this table, and
  the tests refuse it);
- counters are rendered `gatewayd_<name>_total`, gauges `gatewayd_<name>`, histograms
  `gatewayd_<name>_bucket|_sum|_count` with cumulative `le` buckets ending in +Inf;
- process metrics (`process_*`, the names Prometheus client libraries use) are read from /proc
  at render time, never on the hot path;
- `observe` costs one bisect and three additions.
"""

from __future__ import annotations

import os
import resource
from bisect import bisect_left
from collections.abc import Iterator, Sequence

Key = tuple[str, tuple[tuple[str, str], ...]]

# Seconds; a poll is a few ms on a LAN, up to the device timeout (1 s by default) times retries.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HELP: dict[str, str] = {
    # pipeline
    "polls": "Polls of a device's groups that ran (answered or not).",
    "poll_failures": "Polls in which every reading was bad.",
    "polls_missed": "Poll due times the loop was a period or more late for (coalesced into one).",
    "polls_skipped": "Poll due times skipped because the group's previous poll was still running.",
    "polls_shed": "Polls not made because the process was near its memory ceiling "
    "([gateway] memory_limit_mb) while another poll ran.",
    "poll_duration_seconds": "How long a poll of a device took, driver call to readings.",
    "readings": "Readings the drivers produced.",
    "readings_bad": "Readings of bad quality.",
    "pipeline_errors": "Polls whose readings the rules or the buffer failed on (lost).",
    "driver_crashes": "Driver failures (raised, hung past the deadline, or could not start).",
    "driver_restarts": "Drivers rebuilt after a failure.",
    "driver_events": "A driver's own counts (requests, faults by reason, retries), by kind.",
    "device_last_poll_timestamp_seconds": "Wall-clock time of the device's last poll.",
    "device_last_poll_good": "Good readings in the device's last poll.",
    "device_last_poll_bad": "Bad readings in the device's last poll.",
    "device_last_bad_reason": "1 for each reason (up to 3) of the last poll's bad readings.",
    "rules_dropped": "Readings the rules filtered out or consumed into a window.",
    "rules_expression_errors": "Rule expressions that failed on a reading (the reading went on).",
    "rules_late_readings": "Readings for a window already closed (dropped).",
    # buffer
    "buffered_records": "Records committed to the buffer.",
    "buffer_append_failures": "Appends to the buffer that failed (records lost).",
    "buffer_commits": "Buffer transactions that committed appended records.",
    "buffer_evicted_records": "Records dropped from the buffer, by lane and reason.",
    "buffer_quarantined_files": "Corrupt buffer files moved aside by this process.",
    "buffer_salvaged_records": "Records copied out of corrupt buffer files into the fresh one.",
    "buffer_depth": "Records in the buffer, not yet acknowledged.",
    "buffer_depth_lane": "Records in the buffer, by lane.",
    "buffer_inflight": "Records published and waiting for their PUBACK.",
    "buffer_bytes": "Bytes the buffer's records take (the size bound's measure).",
    "buffer_file_bytes": "Size of the buffer's database file plus its WAL.",
    "buffer_oldest_age_seconds": "Age of the oldest record in the buffer, by its stamp.",
    "buffer_hours_left": "Hours until the buffer's bound is reached at the current append rate "
    "with nothing delivered (free bound / fill rate; +Inf when nothing is appended).",
    # uplink
    "published_records": "Records published to the broker.",
    "published_messages": "MQTT messages published with records.",
    "published_bytes": "Payload bytes published with records.",
    "acked_records": "Records the broker acknowledged (and the buffer deleted).",
    "uplink_connected": "1 while the MQTT session is up.",
    "uplink_connects": "MQTT sessions established.",
    "uplink_connect_failures": "Connection attempts that failed.",
    "uplink_reconnects": "Reconnection attempts after a backoff.",
    "uplink_failovers": "Moves to the next of [uplink] hosts (a failed connect, a dead session).",
    "uplink_last_error": "1 for the reason of the last connection failure, while disconnected.",
    "uplink_clock_held": "1 while the uplink waits for a plausible clock (JWT or TLS).",
    "uplink_auth_remints": "Fresh tokens minted at once after an authentication refusal.",
    "uplink_tokens_minted": "Device tokens (JWT) minted.",
    "uplink_token_refreshes": "Sessions renewed because the token was about to expire.",
    "uplink_puback_timeouts": "Sessions ended because a PUBACK did not come in time.",
    "uplink_subscribe_refused": "Subscriptions the broker refused in its SUBACK.",
    "metrics_http_refused": "Connections to /metrics closed unanswered (limit or read timeout).",
    "uplink_publish_refused": "Publishes the broker refused (reason code >= 128).",
    "uplink_messages_received": "Messages received from the cloud (config, commands).",
    "uplink_state_published": "State documents published.",
    # configuration and commands
    "config_version": "Version of the configuration in use.",
    "config_outcomes": "Configuration pushes by outcome.",
    "update_outcomes": "Self-updates by outcome (applied, rolled_back, refused, failed).",
    "update_bytes_received": "Bytes of release files received (by URL or MQTT chunks).",
    "update_chunks_dropped": "MQTT release chunks dropped: no update under way, or out of bounds.",
    "config_reconfigures": "Configurations applied live.",
    "commands": "Cloud commands by outcome.",
    # process, loop, clock
    "info": "1, labelled with the gatewayd version.",
    "start_time_seconds": "Wall-clock time the gateway started.",
    "task_restarts": "Restarts of a supervised task after it crashed.",
    "loop_lag_seconds": "How late the event loop woke at the last check.",
    "loop_lag_max_seconds": "The largest loop lag seen since the start.",
    "loop_stalls": "Loop wake-ups late by 0.5 s or more.",
    "clock_plausible": "1 when the wall clock is after this build's date.",
    "clock_steps": "Steps of the wall clock against the monotonic clock (1 s or more).",
}

PROCESS_HELP = {
    "process_cpu_seconds_total": ("counter", "User and system CPU time spent, in seconds."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "process_open_fds": ("gauge", "Open file descriptors."),
    "process_max_fds": ("gauge", "The limit on open file descriptors."),
    "process_start_time_seconds": ("gauge", "Start time of the process, seconds since the epoch."),
}


class Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1


def key(name: str, **labels: str) -> Key:
    """A series' key in Metrics' tables: the name and its labels, sorted."""
    return (name, tuple(sorted(labels.items())))


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, float] = {}
        self.histograms: dict[Key, Histogram] = {}

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        k = key(name, **labels)
        self.counters[k] = self.counters.get(k, 0) + n

    def total_from(self, name: str, value: float, **labels: str) -> None:
        """Set a counter to a running total kept elsewhere (e.g. the buffer's eviction counts)."""
        self.counters[key(name, **labels)] = value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[key(name, **labels)] = value

    def observe(
        self, name: str, value: float, buckets: Sequence[float] = POLL_BUCKETS, **labels: str
    ) -> None:
        k = key(name, **labels)
        h = self.histograms.get(k)
        if h is None:
            h = self.histograms[k] = Histogram(buckets)
        h.observe(value)

    def drop(self, name: str, **match: str) -> None:
        """Forget the gauge series of `name` whose labels include `match` (e.g. an old reason)."""
        want = set(match.items())
        for k in [k for k in self.gauges if k[0] == name and want <= set(k[1])]:
            del self.gauges[k]

    def get(self, name: str, **labels: str) -> float:
        k = key(name, **labels)
        return self.counters.get(k, self.gauges.get(k, 0))

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def render(self, process: bool = True) -> str:
        return "".join(self._lines()) + (render_process() if process else "")

    def _lines(self) -> Iterator[str]:
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            seen: set[str] = set()
            for (name, labels), value in sorted(table.items()):
                full = f"gatewayd_{name}_total" if kind == "counter" else f"gatewayd_{name}"
                if full not in seen:
                    seen.add(full)
                    yield _head(full, name, kind)
                yield _sample(full, labels, value)
        seen = set()
        for (name, labels), h in sorted(self.histograms.items()):
            full = f"gatewayd_{name}"
            if full not in seen:
                seen.add(full)
                yield _head(full, name, "histogram")
            cumulative = 0
            for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                yield _sample(f"{full}_bucket", (*labels, ("le", le)), cumulative)
            yield _sample(f"{full}_sum", labels, h.sum)
            yield _sample(f"{full}_count", labels, h.count)


def _head(full: str, name: str, kind: str) -> str:
    text = HELP.get(name, f"(no description: add {name!r} to HELP in gatewayd/metrics.py)")
    return f"# HELP {full} {_escape_help(text)}\n# TYPE {full} {kind}\n"


def _sample(full: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    v = _number(value)
    return f"{full}{{{lab}}} {v}\n" if lab else f"{full} {v}\n"


def process_figures() -> dict[str, float]:
    """The process_* figures from /proc (Linux); {} where /proc is not there."""
    out: dict[str, float] = {}
    t = os.times()
    out["process_cpu_seconds_total"] = t.user + t.system
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm") as f:
            vm, rss = (int(x) for x in f.read().split()[:2])
        out["process_virtual_memory_bytes"] = vm * page
        out["process_resident_memory_bytes"] = rss * page
        out["process_open_fds"] = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        out["process_start_time_seconds"] = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    out["process_max_fds"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return out


def render_process() -> str:
    lines = []
    for name, value in process_figures().items():
        kind, text = PROCESS_HELP[name]
        lines.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n{name} {_number(value)}\n")
    return "".join(lines)


def _number(v: float) -> str:
    # Exact: timestamps and large counters must not be rounded to 6 digits.
    if v != v or v in (float("inf"), float("-inf")):
        return {True: "NaN"}.get(v != v, "+Inf" if v > 0 else "-Inf")
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")
