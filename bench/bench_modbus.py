"""Modbus driver benchmark: all contenders in one run, with ratios (STYLE.md §7).

1. Modbus TCP, 1,000 points on 10 simulated devices (the simulators run in a child process so
   the CPU figure is the gateway's alone): readings/s and CPU µs per point for our driver
   (planned requests), the same stack with one request per point, and a naive poller on
   pymodbus's client with one request per point.
2. Requests per poll for the same maps: ours vs Telegraf's shrink and rearrange planners.
3. Modbus RTU over a pty whose simulator keeps true wire timing: 125-register reads/s as a share
   of the physical line limit at 9600, 19200 and 115200 baud (8N2: 11 bits a character; a pty
   refuses parity).

    .venv/bin/python bench/bench_modbus.py [--quick] [--only tcp|rtu]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gatewayd.config import PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus import ModbusDriver, ModbusRtuDriver, plan_requests
from gatewayd.drivers.modbus.options import ModbusRtuOptions, ModbusTcpOptions
from gatewayd.drivers.modbus.types import register_count
from gatewayd.drivers.options import device_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from telegraf_planner import telegraf_requests

DEVICES, POINTS = 10, 100
TYPES = [("uint16", 1), ("int16", 1), ("int32", 2), ("float32", 2), ("uint64", 4), ("float64", 4)]

_SIM = """
import asyncio, sys
from gatewayd_sim.modbus import ModbusTcpSlave
async def main():
    slaves = [await ModbusTcpSlave().start() for _ in range(int(sys.argv[1]))]
    for s in slaves:
        m = s.unit(1)
        m.holding[:] = [i % 65536 for i in range(65536)]
    print(" ".join(str(s.port) for s in slaves), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def device_map(seed: int) -> list[PointConfig]:
    """A device's points: mixed types with the holes real maps have (mostly small, some large)."""
    rng = random.Random(seed)
    out, address = [], 0
    for i in range(POINTS):
        dtype, n = rng.choice(TYPES)
        out.append(PointConfig(id=f"p{i}", table="holding", address=address, type=dtype))  # type: ignore[arg-type]
        address += n + rng.choice([0, 0, 0, 1, 2, 4, 10, 40])
    return out


def start_sims(n: int) -> tuple[subprocess.Popen[str], list[int]]:
    p = subprocess.Popen([sys.executable, "-c", _SIM, str(n)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, [int(x) for x in p.stdout.readline().split()]


async def run_polls(
    drivers: list[Any], groups: list[PollGroup], seconds: float
) -> tuple[float, float, int, int]:
    """Poll every device concurrently, round after round; (wall s, CPU s, readings, bad)."""
    await asyncio.gather(*(d.poll(g) for d, g in zip(drivers, groups, strict=True)))  # warm up
    readings = bad = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for rs in await asyncio.gather(*(d.poll(g) for d, g in zip(drivers, groups, strict=True))):
            readings += len(rs)
            bad += sum(1 for r in rs if r.value is None)
    return time.perf_counter() - t0, time.process_time() - c0, readings, bad


class PerPoint(ModbusDriver):
    """Our stack without planning: one request per point."""

    async def poll(self, group: PollGroup) -> list[Any]:
        self._plans.setdefault(
            group, [r for p in group.points for r in plan_requests([p], max_gap=0)]
        )
        return await super().poll(group)


class NaivePymodbus:
    """What a first attempt looks like: pymodbus's client, one read per point."""

    def __init__(self, port: int) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        self.client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)

    async def poll(self, group: PollGroup) -> list[Any]:
        from gatewayd.drivers.modbus import decode_point
        from gatewayd.reading import Reading, now_ms

        if not self.client.connected:
            await self.client.connect()
        out = []
        for p in group.points:
            rr = await self.client.read_holding_registers(
                p.address, count=register_count(p), device_id=1
            )
            out.append(Reading(f"d/{p.id}", now_ms(), decode_point(p, rr.registers)))
        return out

    async def close(self) -> None:
        self.client.close()


async def bench_tcp(seconds: float) -> None:
    sim, ports = start_sims(DEVICES)
    try:
        maps = [device_map(i) for i in range(DEVICES)]
        devs = [
            device_config(
                ModbusTcpOptions,
                id=f"d{i}",
                driver="modbus_tcp",
                port=port,
                timeout_s=2.0,
                points=tuple(maps[i]),
            )
            for i, port in enumerate(ports)
        ]
        groups = [PollGroup(d.id, d.interval_ms, d.points) for d in devs]
        rows = []
        for name, make in (
            ("gatewayd (planned)", ModbusDriver),
            ("gatewayd, 1 request/point", PerPoint),
            ("naive pymodbus, 1 request/point", lambda d: NaivePymodbus(d.port)),
        ):
            drivers = [make(d) for d in devs]
            wall, cpu, n, bad = await run_polls(drivers, groups, seconds)
            for d in drivers:
                await d.close()
            rows.append((name, n / wall, cpu / n * 1e6, bad))
        base_rate, base_cpu = rows[-1][1], rows[-1][2]
        print(f"Modbus TCP: {DEVICES * POINTS} points on {DEVICES} devices, {seconds:.0f} s each")
        for name, rate, cpu_us, bad in rows:
            print(
                f"  {name:33s} {rate:9.0f} readings/s  {cpu_us:6.1f} µs CPU/point   "
                f"vs. naive: {rate / base_rate:5.1f}x rate, {base_cpu / cpu_us:5.1f}x less CPU"
                + (f"  ({bad} bad)" if bad else "")
            )
        ours = [len(plan_requests(m, max_gap=16)) for m in maps]
        shrink = [
            len(telegraf_requests([(p.address, register_count(p)) for p in m], 125, "shrink"))
            for m in maps
        ]
        rearr = [
            len(telegraf_requests([(p.address, register_count(p)) for p in m], 125, "rearrange"))
            for m in maps
        ]
        touching = [len(plan_requests(m, max_gap=0)) for m in maps]
        print(
            f"Requests per poll, all 10 devices: gatewayd {sum(ours)} (max_gap 16), "
            f"{sum(touching)} (max_gap 0), "
            f"Telegraf shrink {sum(shrink)}, rearrange {sum(rearr)}; "
            f"{sum(rearr) / sum(ours):.1f}x fewer than rearrange; naive {DEVICES * POINTS}"
        )
    finally:
        sim.kill()
        sim.wait()


_RTU_SIM = """
import sys, time
from gatewayd_sim.modbus import ModbusRtuSlave
s = ModbusRtuSlave(baud=int(sys.argv[1])).start()
s.unit(1)
print(s.path, flush=True)
time.sleep(3600)
"""


async def bench_rtu(seconds: float) -> None:
    print(f"Modbus RTU, 125-register reads over a pty with true wire timing, {seconds:.0f} s each")
    for baud in (9600, 19200, 115200):
        sim = subprocess.Popen(
            [sys.executable, "-c", _RTU_SIM, str(baud)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert sim.stdout is not None
            path = sim.stdout.readline().strip()
            pts = (
                PointConfig(id="a", table="holding", address=0),
                PointConfig(id="z", table="holding", address=124),
            )
            dev = device_config(
                ModbusRtuOptions,
                id="rtu",
                driver="modbus_rtu",
                serial_port=path,
                baud=baud,
                stopbits=2,
                timeout_s=1.0,
                max_gap=124,
                points=pts,
            )
            drv = ModbusRtuDriver(dev)
            g = PollGroup(dev.id, dev.interval_ms, pts)
            await drv.poll(g)
            reads, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                rs = await drv.poll(g)
                reads += all(r.value is not None for r in rs)
            rate = reads / (time.perf_counter() - t0)
            await drv.close()
            char = 11 / baud
            t35 = 3.5 * char if baud <= 19200 else 0.00175
            limit = 1 / ((8 + 255) * char + 2 * t35)
            share = 100 * rate / limit
            print(f"  {baud:6d} baud: {rate:6.2f} reads/s of a {limit:5.2f} limit = {share:5.1f} %")
        finally:
            sim.kill()
            sim.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (under a minute in all)")
    ap.add_argument("--only", choices=["tcp", "rtu"], help="run one part")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else 10.0
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if args.only != "rtu":
        asyncio.run(bench_tcp(seconds))
    if args.only != "tcp":
        asyncio.run(bench_rtu(seconds))


if __name__ == "__main__":
    main()
