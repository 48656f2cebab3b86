"""Steady-state profiles (p100, p1000, idle) and start-up, each beside a same-run baseline."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    LatencySubscriber,
    Mosquitto,
    cpu_ns_seconds,
    cpu_seconds,
    percentile,
    rig,
    rss_mb,
    wait_for,
    write_bytes,
)

HERE = Path(__file__).parent


def _sample(pid: int, seconds: float, timeline: list[dict[str, float]], t0: float) -> float:
    """Sample CPU and RSS once a second for `seconds`; returns the peak RSS in MB."""
    peak = 0.0
    end = time.monotonic() + seconds
    last_cpu, last_t = cpu_seconds(pid), time.monotonic()
    while time.monotonic() < end:
        time.sleep(1.0)
        cpu, now = cpu_seconds(pid), time.monotonic()
        rss = rss_mb(pid)
        peak = max(peak, rss)
        timeline.append(
            {"t": now - t0, "cpu_pct": 100 * (cpu - last_cpu) / (now - last_t), "rss_mb": rss}
        )
        last_cpu, last_t = cpu, now
    return peak


def steady(
    name: str,
    devices: int,
    points: int,
    interval_ms: int,
    seconds: float,
    warmup: float = 3.0,
    cwd: Path | None = None,
    naive: bool = True,
    tail: str = "",
) -> dict[str, Any]:
    with rig() as r:
        r.start_devices(devices, points)
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub = LatencySubscriber(broker.port)
        gw = r.start_gateway(r.config(broker.port, points, interval_ms, tail=tail), cwd=cwd)
        wait_for(lambda: sub.unique > 0, 20, "first reading at the subscriber")
        time.sleep(warmup)
        n0, cpu0, t0 = sub.unique, cpu_ns_seconds(gw.pid), time.monotonic()
        wb0 = write_bytes(gw.pid)
        lat0 = len(sub.latencies_ms)
        timeline: list[dict[str, float]] = []
        peak = _sample(gw.pid, seconds, timeline, t0)
        n1, cpu1, t1 = sub.unique, cpu_ns_seconds(gw.pid), time.monotonic()
        wb1 = write_bytes(gw.pid)
        lats = sub.latencies_ms[lat0:]
        sub.close()
        delivered = n1 - n0
        result = {
            "profile": name,
            "devices": devices,
            "points": points,
            "interval_ms": interval_ms,
            "seconds": round(t1 - t0, 1),
            "delivered_per_s": delivered / (t1 - t0),
            "expected_per_s": devices * points * 1000 / interval_ms,
            "cpu_us_per_reading": 1e6 * (cpu1 - cpu0) / max(delivered, 1),
            "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
            "rss_mb": peak,
            # Storage writes (WAL, checkpoints, the file), from /proc/<pid>/io: SD card wear.
            "write_bytes_per_reading": (wb1 - wb0) / max(delivered, 1),
            "latency_p50_ms": percentile(lats, 50),
            "latency_p99_ms": percentile(lats, 99),
            "timeline": timeline,
            "latency_timeline": [(round(t - t0, 3), lat) for t, lat in sub.timeline if t >= t0],
        }
        if not naive:
            return result
        base = _naive(r.device_ports, broker.port, points, interval_ms, seconds)
        result["baseline"] = base
        # The floor the issue compares with: one QoS 1 message per device poll.
        poll = _naive(r.device_ports, broker.port, points, interval_ms, seconds, per_poll=True)
        result["baseline_per_poll"] = poll
        if base["cpu_us_per_reading"] > 0:  # an idle script may use no CPU tick at all
            result["cpu_ratio_vs_naive"] = result["cpu_us_per_reading"] / base["cpu_us_per_reading"]
        result["rss_ratio_vs_naive"] = result["rss_mb"] / base["rss_mb"]
        return result


def _naive(
    ports: list[int],
    broker: int,
    points: int,
    interval_ms: int,
    seconds: float,
    per_poll: bool = False,
) -> dict[str, Any]:
    """The same polling by the naive script; counted by its published messages."""
    p = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "naive_poller.py"),
            *(["--per-poll"] if per_poll else []),
            str(broker),
            str(interval_ms / 1000),
            str(points),
            *map(str, ports),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2.0)
        cpu0, t0 = cpu_ns_seconds(p.pid), time.monotonic()
        timeline: list[dict[str, float]] = []
        peak = _sample(p.pid, min(seconds, 20.0), timeline, t0)  # 20 s: a stable enough figure
        cpu1, t1 = cpu_ns_seconds(p.pid), time.monotonic()
    finally:
        p.kill()
        p.wait()
    readings = len(ports) * points * (t1 - t0) * 1000 / interval_ms
    return {
        "what": "naive poll-and-publish script (pymodbus + paho, one QoS 1 message per "
        + ("device poll" if per_poll else "reading")
        + ", no buffer)",
        "cpu_us_per_reading": 1e6 * (cpu1 - cpu0) / readings,
        "rss_mb": peak,
    }


def startup(runs: int) -> dict[str, Any]:
    """`gatewayd run` to READY (sd_notify) and to the first record at the subscriber."""
    ready: list[float] = []
    first: list[float] = []
    with rig() as r:
        r.start_devices(1, 10)
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub = LatencySubscriber(broker.port)
        cfg = r.config(broker.port, 10, 100)
        sock_path = str(r.work / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
            ns.bind(sock_path)
            ns.settimeout(10)
            for _ in range(runs):
                n0 = sub.unique
                t0 = time.monotonic()
                gw = r.start_gateway(cfg, env={"NOTIFY_SOCKET": sock_path})
                while b"READY=1" not in ns.recv(4096):
                    pass
                ready.append(time.monotonic() - t0)
                wait_for(lambda n0=n0: sub.unique > n0, 10, "first record")
                first.append(time.monotonic() - t0)
                gw.terminate()
                gw.wait(10)
        sub.close()
    base = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=os.environ)
        base.append(time.monotonic() - t0)
    med = statistics.median
    return {
        "ready_s": med(ready),
        "first_record_s": med(first),
        "python_pass_s": med(base),
        "ready_ratio_vs_python_pass": med(ready) / med(base),
        "runs": runs,
    }


def wear(seconds: float) -> dict[str, Any]:
    """SD card wear: bytes the daemon writes to storage per reading (/proc/<pid>/io write_bytes:
    WAL frames, checkpoints into the file, vacuum), at p100 and p1000 with sync normal and full,
    beside the bytes of the stored bodies themselves (what a reading must cost at the least)."""
    from gatewayd.buffer.codec import encode_body
    from gatewayd.reading import Record

    body = len(encode_body(Record("dev0/r42", 1_700_000_000_000, 12345)).encode())
    out: dict[str, Any] = {"body_bytes": body, "runs": [], "rows": []}
    for name, devices, interval in (("p100", 1, 100), ("p1000", 10, 1000)):
        for sync in ("normal", "full"):
            r = steady(
                name,
                devices,
                100,
                interval,
                seconds,
                naive=False,
                tail=f'[buffer]\nsync = "{sync}"\n',
            )
            wb = r["write_bytes_per_reading"]
            out["runs"].append({"profile": name, "sync": sync, "write_bytes_per_reading": wb})
            out["rows"].append(
                (
                    f"bytes written to storage per reading, {name}, sync {sync}",
                    f"{wb:,.0f} B",
                    "",
                    f"{body} B (the stored body)",
                    f"{wb / body:.1f}x",
                )
            )
    out["summary"] = ", ".join(
        f"{r['profile']}/{r['sync']} {r['write_bytes_per_reading']:,.0f} B" for r in out["runs"]
    )
    return out
