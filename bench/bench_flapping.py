"""A flapping Modbus device: log lines, device_down events, bad readings and recovery, in one run.

A simulated Modbus TCP slave (125 holding registers, one merged read) is up for `period` seconds,
then gone (its server closed: connection refused) for `period` seconds, and so on; the driver
polls it at `interval`, as the scheduler would. Printed beside each figure, measured from the
same poll outcomes in the same run, is the policy of c3de71f: a WARNING at each outage's first
failed poll and an INFO at each recovery (one line per state change), and a bad reading per
point for every poll while the device is failing or backed off.

    .venv/bin/python bench/bench_flapping.py            # every 5 s for 10 min, polled every 1 s
    .venv/bin/python bench/bench_flapping.py --quick    # the same with time scaled by 1/10

--quick scales every duration (period, run, poll interval, log window) by 1/10, so its counts
are comparable with the full run's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import time

from gatewayd.config import PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality
from gatewayd_sim.modbus import ModbusTcpSlave
from gatewayd_sim.procs import free_port

POINTS = 125


class Lines(logging.Handler):
    """Counts what a journal at the default level (INFO) would keep."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.n = 0
        self.by_event: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = record.getMessage().split()[0]
        if event == "poll_group_planned":
            return
        self.n += 1
        self.by_event[event] = self.by_event.get(event, 0) + 1


async def _slave(port: int) -> ModbusTcpSlave:
    slave = await ModbusTcpSlave(port=port).start()
    slave.unit(1).holding[:POINTS] = list(range(POINTS))
    return slave


async def run(period_s: float, duration_s: float, interval_s: float, window_s: float) -> None:
    ModbusDriver.log_window_s = window_s
    port = free_port()
    slave: ModbusTcpSlave | None = await _slave(port)
    points = tuple(PointConfig(id=f"r{a}", table="holding", address=a) for a in range(POINTS))
    dev = device_config(
        ModbusTcpOptions,
        id="flappy",
        driver="modbus_tcp",
        port=port,
        interval_ms=round(interval_s * 1000),
        timeout_s=min(1.0, interval_s),
        points=points,
    )
    drv = ModbusDriver(dev)
    group = PollGroup(dev.id, dev.interval_ms, points)
    lines = Lines()
    logger = logging.getLogger("gatewayd.drivers.modbus")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)

    polls = bad = good_polls = 0
    old_lines = old_bad = 0  # c3de71f's policy, fed the same outcomes
    old_failing = False
    returned_at: int | None = None
    back_after: list[int] = []
    events = 0
    was_down = None
    t0 = time.monotonic()
    flip_at = t0 + period_s
    while (now := time.monotonic()) < t0 + duration_s:
        if now >= flip_at:
            flip_at += period_s
            if slave is not None:
                await slave.stop()
                slave = None
            else:
                slave = await _slave(port)
                returned_at = polls
        tick = time.monotonic()
        rs = await drv.poll(group)
        polls += 1
        ok = bool(rs) and all(r.quality is Quality.GOOD for r in rs)
        bad += sum(r.quality is Quality.BAD for r in rs)
        if drv.down is not was_down and drv.down is not None:
            events += 1
        was_down = drv.down
        if ok:
            good_polls += 1
            if returned_at is not None:
                back_after.append(polls - returned_at)
                returned_at = None
            old_lines += old_failing  # device_recovered
            old_failing = False
        else:
            old_bad += POINTS
            old_lines += not old_failing  # device_failing, the first failed poll of an outage
            old_failing = True
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - tick)))
    await drv.close()
    if slave is not None:
        await slave.stop()
    logger.removeHandler(lines)

    elapsed = time.monotonic() - t0
    print(
        f"bench_flapping: up/down every {period_s:g} s for {elapsed:.0f} s, polled every "
        f"{interval_s:g} s, {POINTS} points, log window {window_s:g} s "
        f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})"
    )
    print(f"  polls {polls} ({good_polls} good), outages (device_down events) {events}")
    print(
        f"  log lines (INFO and up): {lines.n} vs {old_lines} one per state change (c3de71f), "
        f"{old_lines / max(1, lines.n):.1f}x fewer; by event {dict(sorted(lines.by_event.items()))}"
    )
    print(
        f"  bad readings published: {bad} vs {old_bad} one per point per failed poll (c3de71f), "
        f"{old_bad / max(1, bad):.1f}x fewer"
    )
    if back_after:
        print(
            f"  polls from the device's return to good readings: max {max(back_after)}, "
            f"mean {sum(back_after) / len(back_after):.2f} over {len(back_after)} returns"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="time scaled by 1/10 (about 1 minute)")
    p.add_argument("--period", type=float, default=5.0, help="seconds up, then seconds down")
    p.add_argument("--duration", type=float, default=600.0, help="seconds to run")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    p.add_argument("--window", type=float, default=60.0, help="the log summary window, seconds")
    a = p.parse_args()
    # hw-sim's ModbusTcpSlave.stop() cancels its connection handlers, which asyncio reports as
    # errors at every flap; they say nothing about the gateway.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    scale = 0.1 if a.quick else 1.0
    asyncio.run(run(a.period * scale, a.duration * scale, a.interval * scale, a.window * scale))


if __name__ == "__main__":
    main()
