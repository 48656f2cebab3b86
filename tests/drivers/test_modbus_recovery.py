"""A dead or hung Modbus device: down after `fail_threshold` failed polls, probed with one short
request per poll (no bad reading per point per poll while down), back at the first poll after
it returns, and its log lines bounded however it flaps.

Polls here are driven at a fixed interval by the test, as the scheduler would; assertions count
polls and readings, never seconds.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port, wait_port
from modbus_env import device, group, point, tcp_slave

from gatewayd.drivers.health import FailureLog
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.reading import Quality, Reading

FIXTURES = Path(__file__).parent.parent / "fixtures"
INTERVAL_S = 0.1
# Registers of tests/fixtures/plc_map.toml: three requests with max_gap = 0.
POINTS = [
    point("u16", 1),
    point("i32", 2, type="int32", order="CDAB"),
    point("co", 0, table="coil"),
]
VALUES = [True, 54321, -2000000000]  # in plan order: coils first


def _sim(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gatewayd_sim", "modbus", "--map", str(FIXTURES / "plc_map.toml")]
    p = subprocess.Popen([*cmd, "--port", str(port)], stdout=subprocess.DEVNULL)
    wait_port(port)
    return p


def _good(rs: list[Reading]) -> bool:
    return bool(rs) and all(r.quality is Quality.GOOD for r in rs)


async def _tick(t0: float) -> None:
    """Sleep to the next poll tick (what the scheduler does between polls)."""
    await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - t0)))


def test_killed_slave_is_back_at_the_first_poll_after_it_restarts() -> None:
    port = free_port()
    sim = _sim(port)

    async def body() -> None:
        nonlocal sim
        dev = device(port, POINTS, max_gap=0, timeout_s=0.3, fail_threshold=3)
        drv = ModbusDriver(dev)
        g = group(dev)
        rs = await drv.poll(g)
        assert [r.value for r in rs] == VALUES and _good(rs)
        for outage in range(2):
            sim.send_signal(signal.SIGKILL)
            sim.wait(5)
            down: list[list[Reading]] = []
            for _ in range(30):  # 3 s down: the old backoff had grown to 4 s by then
                t0 = time.monotonic()
                down.append(await drv.poll(g))
                await _tick(t0)
            assert [len(rs) for rs in down[:3]] == [3, 3, 3], "bad readings until it is down"
            assert all(r.reason == "disconnected" for rs in down[:3] for r in rs)
            assert [len(rs) for rs in down[3:]] == [0] * 27, "no reading per poll while down"
            assert drv.down is not None and drv.down.cause == "connection refused"
            assert drv.counters["outages"] == outage + 1

            sim = _sim(port)  # on the same port, like a device that reboots
            polls_until_good = 0
            while True:
                t0 = time.monotonic()
                rs = await drv.poll(g)
                polls_until_good += 1
                if rs:
                    break
                assert polls_until_good < 50, "never came back"
                await _tick(t0)
            assert polls_until_good == 1, "the first poll after its return reads it"
            assert [r.value for r in rs] == VALUES and _good(rs)
            assert drv.down is None
        await drv.close()

    try:
        asyncio.run(body())
    finally:
        sim.kill()
        sim.wait(5)


def test_hung_slave_is_probed_with_one_request_per_poll_and_back_at_once() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            slave.unit(1).holding[1] = 7
            dev = device(slave.port, POINTS, max_gap=0, timeout_s=0.1, fail_threshold=2)
            drv = ModbusDriver(dev)
            g = group(dev)
            assert _good(await drv.poll(g))
            slave.faults(1).drop = True  # hangs: takes requests, never answers
            assert [len(await drv.poll(g)) for _ in range(2)] == [3, 3]
            assert drv.down is not None and drv.down.cause == "timeout"
            for _ in range(10):
                asked = slave.requests
                assert await drv.poll(g) == []
                assert slave.requests - asked == 1, "one short probe, not the whole plan"
            slave.faults(1).clear()
            rs = await drv.poll(g)
            assert [r.value for r in rs] == [False, 7, 0] and _good(rs)
            assert drv.down is None
            await drv.close()

    asyncio.run(body())


def test_flapping_device_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    window_s = 1.0
    monkeypatch.setattr(ModbusDriver, "log_window_s", window_s, raising=False)

    async def body() -> tuple[int, float]:
        async with tcp_slave({1: 5}) as slave:
            dev = device(slave.port, [point("a", 1)], timeout_s=0.1, fail_threshold=3)
            drv = ModbusDriver(dev)
            g = group(dev)
            t0 = time.monotonic()
            flaps = 0
            for i in range(400):  # two polls refused, two good: never down, always flapping
                fail = i % 4 < 2
                slave.faults(1).disconnect = fail
                (r,) = await drv.poll(g)
                assert (r.quality is Quality.BAD) == fail
                flaps += fail and i % 4 == 0
                await asyncio.sleep(0.005)
            await drv.close()
            return flaps, time.monotonic() - t0

    with caplog.at_level(logging.DEBUG, logger="gatewayd.drivers.modbus"):
        flaps, elapsed = asyncio.run(body())
    lines = [
        r
        for r in caplog.records
        if r.name == "gatewayd.drivers.modbus" and r.levelno >= logging.INFO
        if r.getMessage().startswith("device_")
    ]
    assert flaps == 100
    windows = elapsed / window_s + 1
    assert len(lines) <= 3 * windows + 1, (len(lines), windows)
    assert lines[0].levelno == logging.WARNING and "device_failing" in lines[0].getMessage()
    assert any("device_summary" in r.getMessage() for r in lines), "counts, not silence"


def test_failure_log_first_failure_then_summaries_then_recovered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.failure_log")
    fl = FailureLog(log, "plc", window_s=60.0)
    with caplog.at_level(logging.DEBUG, logger="test.failure_log"):
        fl.ok(0.0)
        for t in range(0, 200, 1):  # down for 200 s, one failed poll a second
            fl.failed("connection refused", float(t))
        fl.ok(200.0)
        for t in range(201, 400):  # up: nothing more to say
            fl.ok(float(t))
    said = [(r.levelname, r.getMessage().split()[0]) for r in caplog.records if r.levelno >= 20]
    assert said == [
        ("WARNING", "device_failing"),
        ("WARNING", "device_summary"),
        ("WARNING", "device_summary"),
        ("WARNING", "device_summary"),
        ("INFO", "device_recovered"),
    ]
    assert "failed_polls=200" in caplog.records[-1].getMessage() or any(
        "failed_polls=200" in r.getMessage() for r in caplog.records
    )
    assert not fl.open, "a quiet window ends the episode"
