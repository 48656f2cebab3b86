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
   bound, for `--daemon-minutes` (10 by default): the gateway's RSS at the start and after 1, 5,
   10 ... minutes, its CPU per reading, the readings produced and the buffer's depth, bytes
   and evictions (from its /metrics).
The CPU figures are this process's (the drivers, asyncua's decoding, the event loop); the
servers run elsewhere.

    nice .venv/bin/python bench/bench_opcua.py [--quick] [--idle-minutes M] [--daemon-minutes M]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import cpu_seconds, rss_mb

from gatewayd.config import PointConfig, load
from gatewayd.drivers import Driver, PollGroup, poll_groups
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.opcua import OpcUaDriver
from gatewayd.drivers.options import device_config
from gatewayd_sim.procs import free_port, wait_port

ITEMS = 1000

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
    """Sample times: 1, 5, 10, 20, 30, 60 minutes within `total_s`, and its end."""
    return [m * 60.0 for m in (1, 5, 10, 20, 30, 60) if m * 60.0 < total_s] + [total_s]


def scrape(port: int) -> dict[str, float]:
    """Each metric's total over its label sets, by name."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
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


def unreachable_uplink(ua_port: int, total_s: float) -> None:
    """Phase 4 (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-opcua-") as tmp:
        work, metrics_port = Path(tmp), free_port()
        cfg = daemon_config(work, ua_port, metrics_port)
        with open(work / "gateway.log", "ab") as log:
            gw = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "--log-level", "WARNING", "run", "-c", str(cfg)],
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
            print(
                f"gatewayd run, uplink unreachable, {total_s / 60:.1f} min (buffer bound 64 MiB):"
            )
            print(f"  start    RSS {rss_mb(gw.pid):6.1f} MB")
            for mark in marks_of(total_s):
                time.sleep(max(0.0, t0 + mark - time.monotonic()))
                m = scrape(metrics_port)
                n = m.get("gatewayd_readings_total", 0) - m0.get("gatewayd_readings_total", 0)
                cpu = cpu_seconds(gw.pid) - cpu0
                print(
                    f"  {mark / 60:4.1f} min RSS {rss_mb(gw.pid):6.1f} MB, readings {n:9.0f} "
                    f"({n / mark:5.0f}/s, bad {m.get('gatewayd_readings_bad_total', 0):.0f}), "
                    f"{cpu / max(n, 1) * 1e6:5.1f} µs CPU/reading, buffer depth "
                    f"{m.get('gatewayd_buffer_depth', 0):.0f} "
                    f"({m.get('gatewayd_buffer_bytes', 0) / 2**20:.1f} MiB), evicted "
                    f"{m.get('gatewayd_buffer_evicted_records_total', 0):.0f}"
                )
            assert gw.poll() is None, (work / "gateway.log").read_text()[-2000:]
        finally:
            gw.kill()
            gw.wait()


async def run(seconds: float, idle_s: float, daemon_s: float) -> None:
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

        await asyncio.to_thread(unreachable_uplink, ua_port, daemon_s)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute in all)")
    ap.add_argument("--idle-minutes", type=float, default=1.0, help="the unpolled run's length")
    ap.add_argument("--daemon-minutes", type=float, default=10.0, help="the gateway's run")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.quick:
        asyncio.run(run(10.0, 15.0, 30.0))
    else:
        asyncio.run(run(60.0, args.idle_minutes * 60, args.daemon_minutes * 60))


if __name__ == "__main__":
    main()
