"""Modbus RTU over real pseudo-terminals (and RTU over TCP): exact decoding, a late reply never
taken as the next answer, CRC errors, shared buses with fair interleaving, true line timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial
from modbus_env import VALUES, group, point

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers.modbus import ModbusRtuDriver, ModbusRtuOverTcpDriver
from gatewayd.drivers.modbus.options import ModbusRtuOptions, ModbusRtuOverTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality
from gatewayd_sim.modbus import ModbusRtuSlave, to_words


def rtu_device(path: str, points: list[PointConfig], **kw: Any) -> DeviceConfig:
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("baud", 115200)
    return device_config(
        ModbusRtuOptions,
        id=kw.pop("id", "rtu"),
        driver="modbus_rtu",
        serial_port=path,
        points=tuple(points),
        **kw,
    )


@pytest.fixture
def slave() -> Iterator[ModbusRtuSlave]:
    s = ModbusRtuSlave(baud=115200).start()
    yield s
    s.stop()


def test_every_type_and_order_decodes_exactly_over_a_pty(slave: ModbusRtuSlave) -> None:
    pts, address = [], 0
    for dtype, value in VALUES.items():
        for order in ("ABCD", "CDAB", "BADC", "DCBA"):
            words = to_words(value, dtype, order)
            slave.unit(1).set_words("holding", address, words)
            pts.append(point(f"{dtype}_{order}", address, type=dtype, order=order))
            address += len(words)
    slave.unit(1).coils[3] = 1
    pts.append(point("coil3", 3, table="coil", type="bool"))

    async def body() -> None:
        drv = ModbusRtuDriver(rtu_device(slave.path, pts))
        readings = await drv.poll(group(drv.device))
        got = {r.point.split("/")[1]: r.value for r in readings}
        assert all(r.quality is Quality.GOOD for r in readings), readings
        for p in pts[:-1]:
            assert got[p.id] == VALUES[p.type], p.id
        assert got["coil3"] is True
        assert drv.requests_per_group[group(drv.device).name] == 2
        await drv.close()

    asyncio.run(body())


def test_late_reply_is_not_taken_as_the_next_answer(slave: ModbusRtuSlave) -> None:
    slave.unit(1).holding[0] = 111

    async def body() -> None:
        drv = ModbusRtuDriver(rtu_device(slave.path, [point("a", 0)], timeout_s=0.3))
        slave.faults(1).__dict__.update(delay_s=0.5, times=1)  # answers 111, 0.5 s late
        (first,) = await drv.poll(group(drv.device))
        assert (first.quality, first.reason) == (Quality.BAD, "timeout")
        slave.unit(1).holding[0] = 222
        (second,) = await drv.poll(group(drv.device))
        assert (second.value, second.quality) == (222, Quality.GOOD), "the late 111 was dropped"
        await drv.close()

    asyncio.run(body())


def test_bad_crc_gives_crc_reason_then_recovers(slave: ModbusRtuSlave) -> None:
    slave.unit(1).holding[5] = 5

    async def body() -> None:
        drv = ModbusRtuDriver(rtu_device(slave.path, [point("a", 5)]))
        slave.faults(1).__dict__.update(bad_crc=True, times=1)
        (bad,) = await drv.poll(group(drv.device))
        assert (bad.quality, bad.reason) == (Quality.BAD, "crc")
        (good,) = await drv.poll(group(drv.device))
        assert (good.value, good.quality) == (5, Quality.GOOD)
        assert drv.counters["faults.crc"] == 1
        await drv.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"truncate": True}, "short_reply"),
        ({"short": True}, "short_reply"),
        ({"wrong_unit": True}, "wrong_unit"),
        ({"exception": 2}, "exception_02"),
    ],
)
def test_rtu_faults_give_their_reason(
    slave: ModbusRtuSlave, fault: dict[str, Any], reason: str
) -> None:
    async def body() -> None:
        slave.unit(1)
        drv = ModbusRtuDriver(rtu_device(slave.path, [point("a", 0, type="int32")]))
        slave.faults(1).__dict__.update(fault, times=1)
        (r,) = await drv.poll(group(drv.device))
        assert (r.quality, r.reason) == (Quality.BAD, reason)
        (r,) = await drv.poll(group(drv.device))
        assert r.quality is Quality.GOOD
        await drv.close()

    asyncio.run(body())


def test_units_on_one_bus_interleave_and_a_missing_unit_does_not_stop_them(
    slave: ModbusRtuSlave,
) -> None:
    for u in (1, 2):
        slave.unit(u).holding[0] = u * 100

    async def body() -> None:
        pts = [point("a", 0), point("b", 50)]  # two requests per poll with max_gap 0
        drvs = [
            ModbusRtuDriver(rtu_device(slave.path, pts, id=f"u{u}", unit=u, max_gap=0))
            for u in (1, 2, 7)
        ]
        results = await asyncio.gather(*(d.poll(group(d.device)) for d in drvs))
        assert [r.value for r in results[0]] == [100, 0]
        assert [r.value for r in results[1]] == [200, 0]
        assert [r.reason for r in results[2]] == ["timeout", "timeout"]
        assert slave.asked[:4] == [1, 2, 1, 2], "requests on the bus alternate between units"
        for d in drvs:
            await d.close()

    asyncio.run(body())


def test_line_timing_follows_the_baud_rate() -> None:
    slave = ModbusRtuSlave(baud=19200).start()
    slave.unit(1)
    try:

        async def body() -> float:
            drv = ModbusRtuDriver(
                rtu_device(slave.path, [point("a", 0), point("z", 124)], baud=19200, max_gap=124)
            )
            t0 = time.monotonic()
            for _ in range(3):
                rs = await drv.poll(group(drv.device))
                assert all(r.quality is Quality.GOOD for r in rs)
            await drv.close()
            return (time.monotonic() - t0) / 3

        per_read = asyncio.run(body())
        # 8 + 255 bytes of 11 bits at 19200 baud: a 125-register read cannot beat 0.151 s.
        assert per_read >= 263 * 11 / 19200
    finally:
        slave.stop()


def test_rtu_over_tcp_reads_and_checks_the_unit() -> None:
    slave = ModbusRtuSlave(baud=None).start_tcp()
    slave.unit(3).holding[0] = 333
    try:

        async def body() -> None:
            dev = device_config(
                ModbusRtuOverTcpOptions,
                id="gw",
                driver="modbus_rtu_over_tcp",
                port=slave.port,
                unit=3,
                timeout_s=0.3,
                points=(point("a", 0),),
            )
            drv = ModbusRtuOverTcpDriver(dev)
            (r,) = await drv.poll(group(dev))
            assert (r.value, r.quality) == (333, Quality.GOOD)
            slave.faults(3).__dict__.update(wrong_unit=True, times=1)
            (r,) = await drv.poll(group(dev))
            assert r.reason == "wrong_unit"
            (r,) = await drv.poll(group(dev))
            assert r.value == 333
            slave.faults(3).__dict__.update(disconnect=True, times=1)
            (r,) = await drv.poll(group(dev))
            assert r.reason == "disconnected"
            (r,) = await drv.poll(group(dev))
            assert (r.value, r.quality) == (333, Quality.GOOD), "reconnected on its own"
            await drv.close()

        asyncio.run(body())
    finally:
        slave.stop()


def test_inter_request_delay_keeps_the_bus_quiet_between_requests(slave: ModbusRtuSlave) -> None:
    slave.unit(1)

    async def body() -> None:
        pts = [point("a", 0), point("b", 60)]
        drv = ModbusRtuDriver(rtu_device(slave.path, pts, max_gap=0, request_delay_s=0.15))
        for _ in range(2):
            assert all(r.quality is Quality.GOOD for r in await drv.poll(group(drv.device)))
        await drv.close()

    asyncio.run(body())
    gaps = [b - a for a, b in zip(slave.heard_at, slave.heard_at[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 0.15


def test_a_port_held_by_another_program_is_reported_not_shared(slave: ModbusRtuSlave) -> None:
    slave.unit(1)
    other = serial.Serial(slave.path, exclusive=True)
    try:

        async def body() -> None:
            drv = ModbusRtuDriver(rtu_device(slave.path, [point("a", 0)]))
            (r,) = await drv.poll(group(drv.device))
            assert (r.quality, r.reason) == (Quality.BAD, "disconnected")
            other.close()
            (r,) = await drv.poll(group(drv.device))
            assert r.quality is Quality.GOOD
            await drv.close()

        asyncio.run(body())
    finally:
        other.close()
