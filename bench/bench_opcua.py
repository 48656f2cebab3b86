"""OPC UA driver benchmark: CPU per reading against the Modbus driver's, in the same run.

1. OPC UA: 1,000 monitored items (Bulk.0..999 of hw-sim's asyncua server, a child process, all
   changing every 100 ms), publishing and sampling at 100 ms, collected by a poll a second.
2. Modbus TCP baseline: 1,000 holding registers on one simulated device (a child process),
   polled every 100 ms, so both deliver about 10,000 readings a second.
3. Bounded memory: the same 1,000 items with nobody polling (an uplink that never drains) and
   queue_max = 10,000: the process's RSS at the start and end, and the drops counted.
The CPU figures are this process's (the drivers, asyncua's decoding, the event loop); the
servers run elsewhere.

    .venv/bin/python bench/bench_opcua.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

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


async def run(seconds: float, idle_s: float) -> None:
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
        rss0 = rss_kb()
        await asyncio.sleep(idle_s)  # nobody polls: the queue fills to its bound, then drops
        rss1 = rss_kb()
        print(
            f"Unpolled for {idle_s:.0f} s (queue_max 10000): RSS {rss0 / 1024:.1f} -> "
            f"{rss1 / 1024:.1f} MiB, queued {idle._queued}, "
            f"dropped {idle.counters['notifications_dropped']}"
        )
        await idle.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute in all)")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    asyncio.run(run(10.0 if args.quick else 60.0, 15.0 if args.quick else 120.0))


if __name__ == "__main__":
    main()
