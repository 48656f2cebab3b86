"""Every fault a Modbus TCP device can show becomes bad-quality readings with the right reason,
while another device keeps polling; the faulty device recovers on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from modbus_env import device, group, point, tcp_slave

from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.reading import Quality

FAULTS: list[tuple[dict[str, Any], str]] = [
    ({"delay_s": 1.0}, "timeout"),
    ({"drop": True}, "timeout"),
    ({"exception": 4}, "exception_04"),
    ({"truncate": True}, "short_reply"),
    ({"cut": True}, "short_reply"),
    ({"short": True}, "short_reply"),
    ({"wrong_unit": True}, "wrong_unit"),
    ({"wrong_function": True}, "wrong_function"),
    ({"wrong_transaction": True}, "wrong_transaction"),
    ({"disconnect": True}, "disconnected"),
]


@pytest.mark.parametrize(
    ("fault", "reason"), FAULTS, ids=[r + "-" + next(iter(f)) for f, r in FAULTS]
)
def test_fault_gives_reason_and_other_device_keeps_polling(
    fault: dict[str, Any], reason: str
) -> None:
    async def body() -> None:
        pts = [point("a", 0), point("b", 1, type="int32")]
        async with tcp_slave({0: 7, 1: 0, 2: 9}) as bad_slave, tcp_slave({0: 5}) as good_slave:
            bad = ModbusDriver(device(bad_slave.port, pts, id="bad"))
            good = ModbusDriver(device(good_slave.port, [point("a", 0)], id="good"))
            bad_slave.faults(1).__dict__.update(fault, times=1)
            faulty, fine = await asyncio.gather(
                bad.poll(group(bad.device)), good.poll(group(good.device))
            )
            assert [(r.point, r.quality, r.reason, r.value) for r in faulty] == [
                ("bad/a", Quality.BAD, reason, None),
                ("bad/b", Quality.BAD, reason, None),
            ]
            assert [(r.value, r.quality) for r in fine] == [(5, Quality.GOOD)]
            assert bad.counters[f"faults.{reason}"] == 1
            await asyncio.sleep(1.0 if fault.get("delay_s") else 0)  # let a late reply arrive
            again = await bad.poll(group(bad.device))
            assert [(r.value, r.quality) for r in again] == [(7, Quality.GOOD), (9, Quality.GOOD)]
            await bad.close()
            await good.close()

    asyncio.run(body())


def test_unknown_unit_is_silent_and_times_out() -> None:
    async def body() -> None:
        async with tcp_slave({0: 1}) as slave:
            drv = ModbusDriver(device(slave.port, [point("a", 0)], unit=9))
            (r,) = await drv.poll(group(drv.device))
            assert (r.quality, r.reason) == (Quality.BAD, "timeout")
            await drv.close()

    asyncio.run(body())


def test_busy_is_retried_with_delay_and_then_answers() -> None:
    async def body() -> None:
        async with tcp_slave({0: 42}) as slave:
            drv = ModbusDriver(device(slave.port, [point("a", 0)], busy_delay_s=0.05))
            slave.faults(1).__dict__.update(exception=6, times=2)
            (r,) = await drv.poll(group(drv.device))
            assert (r.value, r.quality) == (42, Quality.GOOD)
            assert drv.counters["busy_retries"] == 2
            slave.faults(1).__dict__.update(exception=6, times=5)
            (r,) = await drv.poll(group(drv.device))
            assert (r.quality, r.reason) == (Quality.BAD, "exception_06")
            await drv.close()

    asyncio.run(body())


def test_units_behind_one_tcp_gateway_share_a_connection_and_interleave() -> None:
    async def body() -> None:
        async with tcp_slave({0: 10}, unit=1) as slave:
            slave.unit(2).holding[0] = 20
            pts = [point("a", 0), point("b", 50)]
            drvs = [
                ModbusDriver(device(slave.port, pts, id=f"u{u}", unit=u, max_gap=0))
                for u in (1, 2, 3)
            ]
            results = await asyncio.gather(*(d.poll(group(d.device)) for d in drvs))
            assert [r.value for r in results[0]] == [10, 0]
            assert [r.value for r in results[1]] == [20, 0]
            assert [r.reason for r in results[2]] == ["timeout", "timeout"], "unit 3 is absent"
            assert len(slave._clients) == 1, "one connection for the three units"
            assert slave.asked[:4] == [1, 2, 1, 2]
            for d in drvs:
                await d.close()

    asyncio.run(body())
