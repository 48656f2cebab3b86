"""OPC UA driver benchmark: CPU per reading against the Modbus driver's, in the same run.

1. OPC UA: 1,000 monitored items (Bulk.0..999 of hw-sim's asyncua server, a child process, all
   changing every 100 ms), publishing and sampling at 100 ms, collected by a poll a second.
2. Modbus TCP baseline: 1,000 holding registers on one simulated device (a child process),
   polled every 100 ms, so both deliver about 10,000 readings a second.
3. The driver's queue bound: the same 1,000 items with nobody polling (nothing takes the
   driver's queue) and queue_max = 10,000, for `--idle-minutes` (1 by default): this process's
   RSS, the notifications queued and dropped. Nobody polling also means nobody reconnects: a
   session lost meanwhile stays lost, so this phase says nothing about hours.
4. An unreachable uplink, as it happens: a real `gatewayd run` process with the same 1,000
   items (collected every second), its uplink at a port nobody listens on and a 64 MiB buffer
   bound, for `--minutes` (20 by default). The gateway runs under bench/opcua_probe.py, which
   reports from inside the process at the start and after 1, 5, 10, 15, 20 ... minutes: RSS
   and what it is made of (pymalloc's arenas, glibc malloc's bytes in use and kept free,
   sqlite's memory and the buffer's page cache against its cache_size bound), the Python heap
   (allocated blocks, gc-tracked objects; tracemalloc's bytes with `--trace`), asyncua's
   pending requests and monitored items, the driver's queued notifications and the loop's
   tasks; beside them readings/s, CPU per reading and the buffer's depth and evictions (its
   /metrics). At the end: the growth from minute 1 to the last mark by part and by object
   type, and with `--trace FRAMES` the source lines whose traced bytes changed most, with
   their bytes at every mark. tracemalloc costs CPU and memory (and each snapshot is taken
   in the process), so a `--trace` run's RSS and CPU figures are not the gateway's.
The CPU figures are this process's (the drivers, asyncua's decoding, the event loop); the
servers run elsewhere.

    nice .venv/bin/python bench/bench_opcua.py [--quick] [--idle-minutes M] [--minutes M]
        [--trace FRAMES] [--daemon-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

from harness import cpu_seconds

from gatewayd.config import PointConfig, load
from gatewayd.drivers import Driver, PollGroup, poll_groups
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.opcua import OpcUaDriver
from gatewayd.drivers.options import device_config
from gatewayd_sim.procs import free_port, wait_port

ITEMS = 1000
MIB = 1 << 20

_MODBUS_SIM = """
import asyncio, sys
from gatewayd_sim.modbus import ModbusTcpSlave
async def main():
    s = await ModbusTcpSlave(port=int(sys.argv[1])).start()
    s.unit(1).holding[:] = [i % 65536 for i in range(65536)]
    await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def opcua_device(port: int, interval_ms: int, queue_max: int = 10_000) -> tuple[Driver, PollGroup]:
    points = "".join(
        f'[[devices.points]]\nid = "b{i}"\nnode = "ns=2;s=Bulk.{i}"\nsampling_interval_ms = 100\n'
        for i in range(ITEMS)
    )
    (dev,) = load(
        '[uplink.auth]\nkind = "none"\n[[devices]]\nid = "ua"\ndriver = "opcua"\n'
        f'endpoint = "opc.tcp://127.0.0.1:{port}/sim"\nsecurity_policy = "None"\n'
        f"publishing_interval_ms = 100\ninterval_ms = {interval_ms}\nqueue_max = {queue_max}\n"
        + points
    ).devices
    (group,) = poll_groups(dev)
    return OpcUaDriver(dev), group


async def measure(
    drv: Driver, group: PollGroup, seconds: float, every_s: float
) -> tuple[int, float]:
    """Readings (good ones) and CPU seconds over `seconds`, polling every `every_s`."""
    await drv.poll(group)  # connect and subscribe outside the measurement
    await asyncio.sleep(1.0)
    await drv.poll(group)
    n, cpu0, end = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end:
        n += sum(1 for r in await drv.poll(group) if r.quality == "good")
        await asyncio.sleep(every_s)
    return n, time.process_time() - cpu0


def marks_of(total_s: float) -> list[float]:
    """Sample times: 1, 5, 10, 15, 20, 30, 60 minutes within `total_s`, and its end."""
    return [m * 60.0 for m in (1, 5, 10, 15, 20, 30, 60) if m * 60.0 < total_s] + [total_s]


def scrape(port: int) -> dict[str, float]:
    """Each metric's total over its label sets, by name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.partition("{")[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


def daemon_config(work: Path, ua_port: int, metrics_port: int) -> Path:
    points = "".join(
        f'[[devices.points]]\nid = "b{i}"\nnode = "ns=2;s=Bulk.{i}"\nsampling_interval_ms = 100\n'
        for i in range(ITEMS)
    )
    text = f"""version = 1
[gateway]
id = "bench"
state_dir = "{work}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[uplink]
host = "127.0.0.1"
port = {free_port()}
project = "p1"
region = "r1"
registry = "reg1"
device = "bench"
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
[buffer]
max_bytes = {64 * 1024 * 1024}
[[devices]]
id = "ua"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:{ua_port}/sim"
security_policy = "None"
publishing_interval_ms = 100
interval_ms = 1000
{points}"""
    path = work / "gateway.toml"
    path.write_text(text)
    return path


PROBE = Path(__file__).with_name("opcua_probe.py")


def probe(work: Path, label: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The gateway's own figures (bench/opcua_probe.py), asked for by a request file."""
    (work / f"{label}.req").touch()
    deadline = time.monotonic() + timeout_s
    while not (work / f"{label}.json").exists():
        assert time.monotonic() < deadline, f"the probe did not answer {label}"
        time.sleep(0.2)
    figures: dict[str, Any] = json.loads((work / f"{label}.json").read_text())
    return figures


def buffer_files_kb(work: Path) -> int:
    """The buffer's files (database, WAL, shared memory) on disk."""
    return sum(p.stat().st_size for p in work.rglob("buffer.sqlite*")) // 1024


def type_growth(a: dict[str, Any], b: dict[str, Any], top: int = 8) -> list[tuple[str, int]]:
    """The object types whose gc-tracked count grew most from a to b."""
    ta, tb = a["types"], b["types"]
    grown = [(k, tb.get(k, 0) - ta.get(k, 0)) for k in set(ta) | set(tb)]
    return sorted((g for g in grown if g[1] != 0), key=lambda g: -abs(g[1]))[:top]


def print_trace_growth(work: Path, labels: list[str], top: int = 15) -> None:
    """tracemalloc: the lines whose live bytes changed most from the first snapshot to the last,
    with their bytes at every snapshot (what a poll or a buffer write holds in flight comes and
    goes; what leaks grows at every step)."""
    noise = (
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, str(PROBE)),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    )
    snaps = [
        tracemalloc.Snapshot.load(str(work / f"{label}.snap")).filter_traces(noise)
        for label in labels
    ]
    by_line = [
        {
            (s.traceback[0].filename, s.traceback[0].lineno): s.size
            for s in snap.statistics("lineno")
        }
        for snap in snaps
    ]
    totals = [sum(lines.values()) for lines in by_line]
    print(
        f"  tracemalloc, {labels[0]} -> {labels[-1]}: traced "
        + " -> ".join(f"{t / 1024:.0f}" for t in totals)
        + f" KiB ({(totals[-1] - totals[0]) / 1024:+.0f} KiB); the lines that changed most, "
        "KiB at " + ", ".join(labels) + ":"
    )
    keys = set(by_line[0]) | set(by_line[-1])
    change = sorted(keys, key=lambda k: -abs(by_line[-1].get(k, 0) - by_line[0].get(k, 0)))
    for key in change[:top]:
        series = " ".join(f"{lines.get(key, 0) / 1024:7.1f}" for lines in by_line)
        where = "/".join(Path(key[0]).parts[-3:])
        delta = (by_line[-1].get(key, 0) - by_line[0].get(key, 0)) / 1024
        print(f"    {delta:+8.1f}  [{series}]  {where}:{key[1]}")


def unreachable_uplink(ua_port: int, total_s: float, trace_frames: int) -> None:
    """Phase 4 (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-opcua-") as tmp:
        work, metrics_port = Path(tmp), free_port()
        cfg = daemon_config(work, ua_port, metrics_port)
        trace = ["--trace", str(trace_frames)] if trace_frames else []
        gatewayd_args = ["--log-level", "WARNING", "run", "-c", str(cfg)]
        with open(work / "gateway.log", "ab") as log:
            gw = subprocess.Popen(
                [sys.executable, str(PROBE), str(work), *trace, "--", *gatewayd_args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(metrics_port, 60)
            deadline = time.monotonic() + 60
            while scrape(metrics_port).get("gatewayd_readings_total", 0) < ITEMS:
                assert time.monotonic() < deadline, (work / "gateway.log").read_text()[-2000:]
                time.sleep(0.5)
            t0, cpu0 = time.monotonic(), cpu_seconds(gw.pid)
            m0 = scrape(metrics_port)
            defaults = json.loads((work / "defaults.json").read_text())
            bound_kib = (
                -defaults["cache_size"]
                if defaults["cache_size"] < 0
                else (defaults["cache_size"] * defaults["page_size"] // 1024)
            )
            print(
                f"gatewayd run, uplink unreachable, {total_s / 60:.1f} min (buffer bound 64 MiB"
                f"{', tracemalloc ' + str(trace_frames) + ' frame(s)' if trace_frames else ''}); "
                f"sqlite cache_size {defaults['cache_size']} = {bound_kib} KiB per connection, "
                f"page {defaults['page_size']} B"
            )
            print(
                "  (MiB; pymalloc: its arenas / bytes in blocks; malloc: glibc's in use / free "
                "but kept / mmapped; sqlite: its memory / the buffer's page cache; traced: "
                "tracemalloc)"
            )
            print(
                "   min    RSS   anon  pymalloc       malloc        sqlite    py blocks gc objs"
                "  traced  file  readings/s µs CPU/rd   depth  evicted  ua pend/items  queued"
                "  tasks"
            )
            seen: list[tuple[str, dict[str, Any]]] = []
            for mark in [0.0, *marks_of(total_s)]:
                time.sleep(max(0.0, t0 + mark - time.monotonic()))
                m = scrape(metrics_port)
                n = m.get("gatewayd_readings_total", 0) - m0.get("gatewayd_readings_total", 0)
                cpu = cpu_seconds(gw.pid) - cpu0
                label = f"m{mark / 60:g}"
                f = probe(work, label)  # after the scrape: a snapshot stops the process a while
                seen.append((label, f))
                traced = f"{f['traced'] / MIB:6.1f}" if "traced" in f else "     -"
                pymalloc = (  # nothing to tell under tracemalloc, which wraps the allocator
                    f"{f['pymalloc_arenas']:3d}/{f['pymalloc_used'] / MIB:4.1f}"
                    if f["pymalloc_arenas"]
                    else "       -"
                )
                cache = sum(c["cache_used"] for c in f["sqlite_connections"])
                print(
                    f"  {mark / 60:4.1f}  {f['VmRSS'] / 1024:5.1f}  {f['RssAnon'] / 1024:5.1f}  "
                    f"{pymalloc}  "
                    f"{f['malloc_used'] / MIB:4.1f}/{f['malloc_free'] / MIB:4.1f}/"
                    f"{f['malloc_mmap'] / MIB:4.1f}  "
                    f"{f['sqlite_memory'] / MIB:4.2f}/{cache / MIB:4.2f}  "
                    f"{f['py_blocks']:7d}  {f['gc_objects']:6d}  {traced}  "
                    f"{buffer_files_kb(work) / 1024:4.0f}  {n / mark if mark else 0:10.0f}  "
                    f"{cpu / n * 1e6 if n else 0:8.1f}  {m.get('gatewayd_buffer_depth', 0):6.0f}  "
                    f"{m.get('gatewayd_buffer_evicted_records_total', 0):7.0f}  "
                    f"{f['ua_pending']:4d}/{f['ua_items']:5d}  {f['driver_queued']:6d}  "
                    f"{f['tasks']:5d}",
                    flush=True,
                )
            assert gw.poll() is None, (work / "gateway.log").read_text()[-2000:]
            (first, a), (last, b) = seen[1], seen[-1]
            t = probe(work, "trim")
            print(
                f"  malloc_trim(0) after {last}: RSS {b['VmRSS'] / 1024:.1f} -> "
                f"{t['VmRSS'] / 1024:.1f} MiB, glibc free but kept {b['malloc_free'] / MIB:.1f} -> "
                f"{t['malloc_free'] / MIB:.1f} MiB"
            )
            print(
                f"  RSS {first} -> {last}: {(b['VmRSS'] - a['VmRSS']) / 1024:+.1f} MiB, anon "
                f"{(b['RssAnon'] - a['RssAnon']) / 1024:+.1f} MiB, pymalloc arenas "
                f"{b['pymalloc_arenas'] - a['pymalloc_arenas']:+d}, malloc in use "
                f"{(b['malloc_used'] - a['malloc_used']) / 1024:+.0f} KiB, free but kept "
                f"{(b['malloc_free'] - a['malloc_free']) / 1024:+.0f} KiB, sqlite "
                f"{(b['sqlite_memory'] - a['sqlite_memory']) / 1024:+.0f} KiB, python blocks "
                f"{b['py_blocks'] - a['py_blocks']:+d}, gc objects "
                f"{b['gc_objects'] - a['gc_objects']:+d}"
            )
            growth = ", ".join(f"{k} {d:+d}" for k, d in type_growth(a, b))
            print(f"  gc-tracked types {first} -> {last}: {growth or 'none changed'}")
            for c in b["sqlite_connections"]:
                print(
                    f"  sqlite connection {Path(c['file']).name}: page cache "
                    f"{c['cache_used'] / 1024:.0f} KiB in use"
                )
            if trace_frames:
                print_trace_growth(work, [label for label, _ in seen[1:]])
        finally:
            gw.kill()
            gw.wait()


async def run(
    seconds: float, idle_s: float, daemon_s: float, trace: int, daemon_only: bool
) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ua_port, mb_port = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gatewayd_sim",
                    "opcua",
                    "--port",
                    str(ua_port),
                    "--items",
                    str(ITEMS),
                    "--period-ms",
                    "100",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(subprocess.Popen([sys.executable, "-c", _MODBUS_SIM, str(mb_port)]))
        wait_port(ua_port, 60)
        wait_port(mb_port, 30)
        if daemon_only:
            await asyncio.to_thread(unreachable_uplink, ua_port, daemon_s, trace)
            return

        ua, ua_group = opcua_device(ua_port, 1000)
        n_ua, cpu_ua = await measure(ua, ua_group, seconds, 1.0)
        dropped = ua.counters["notifications_dropped"]
        await ua.close()

        points = tuple(PointConfig(id=f"r{a}", table="holding", address=a) for a in range(ITEMS))
        mb_dev = device_config(
            ModbusTcpOptions,
            id="mb",
            driver="modbus_tcp",
            port=mb_port,
            interval_ms=100,
            points=points,
        )
        mb = ModbusDriver(mb_dev)
        (mb_group,) = poll_groups(mb_dev)
        n_mb, cpu_mb = await measure(mb, mb_group, seconds, 0.1)
        await mb.close()

        print(f"{ITEMS} points changing every 100 ms, {seconds:.0f} s each")
        us_ua, us_mb = cpu_ua / max(n_ua, 1) * 1e6, cpu_mb / max(n_mb, 1) * 1e6
        for name, n, us, extra in (
            ("OPC UA (subscriptions)", n_ua, us_ua, f"  ({dropped} dropped)"),
            ("Modbus TCP (polled)", n_mb, us_mb, ""),
        ):
            print(f"  {name:24s} {n / seconds:8.0f} readings/s  {us:6.1f} µs CPU/reading{extra}")
        print(f"  OPC UA / Modbus CPU per reading: {us_ua / us_mb:5.1f}x")

        idle, idle_group = opcua_device(ua_port, 1000, queue_max=10_000)
        await idle.poll(idle_group)
        await asyncio.sleep(2.0)
        print(f"Unpolled for {idle_s / 60:.1f} min (queue_max 10000):")
        t0, cpu0, rss0 = time.monotonic(), time.process_time(), rss_kb()
        print(f"  start   RSS {rss0 / 1024:6.1f} MiB")
        for mark in marks_of(idle_s):  # nobody polls: the queue fills to its bound, then drops
            await asyncio.sleep(max(0.0, t0 + mark - time.monotonic()))
            cpu = (time.process_time() - cpu0) / (time.monotonic() - t0) * 100
            print(
                f"  {mark / 60:4.1f} min RSS {rss_kb() / 1024:6.1f} MiB, queued {idle._queued}, "
                f"dropped {idle.counters['notifications_dropped']}, CPU {cpu:.0f}% of a core"
            )
        await idle.close()

        await asyncio.to_thread(unreachable_uplink, ua_port, daemon_s, trace)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute in all)")
    ap.add_argument("--idle-minutes", type=float, default=1.0, help="the unpolled run's length")
    ap.add_argument(
        "--minutes", "--daemon-minutes", type=float, default=20.0, help="the gateway's run"
    )
    ap.add_argument(
        "--trace",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the gateway under tracemalloc (FRAMES per trace) and print the top growth",
    )
    ap.add_argument("--daemon-only", action="store_true", help="only phase 4, the gateway run")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.quick:
        asyncio.run(run(10.0, 15.0, 30.0, args.trace, args.daemon_only))
    else:
        asyncio.run(
            run(60.0, args.idle_minutes * 60, args.minutes * 60, args.trace, args.daemon_only)
        )


if __name__ == "__main__":
    main()
