"""Writes reach the simulated device's registers encoded with the point's type and order, and
are refused with a clear error when the point is not writable, out of range or mistyped."""

from __future__ import annotations

import asyncio

import pytest
from modbus_env import device, point, tcp_slave

from gatewayd.drivers import WriteError
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd_sim.modbus import to_words


def test_writes_reach_the_device_encoded_with_type_and_order() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            setpoint = point("sp", 10, type="int16", scale=0.1, writable=True, min=30, max=80)
            energy = point("e", 20, type="uint32", order="CDAB", writable=True)
            flow = point("f", 30, type="float64", order="BADC", writable=True)
            pump = point("pump", 4, table="coil", type="bool", writable=True)
            drv = ModbusDriver(device(slave.port, [setpoint, energy, flow, pump]))
            await drv.write(setpoint, 65.5)
            await drv.write(energy, 4_000_000_001)
            await drv.write(flow, -1234.5678)
            await drv.write(pump, True)
            m = slave.unit(1)
            assert m.holding[10] == 655
            assert m.holding[20:22] == to_words(4_000_000_001, "uint32", "CDAB")
            assert m.holding[30:34] == to_words(-1234.5678, "float64", "BADC")
            assert m.coils[4] == 1
            assert drv.counters["writes"] == 4
            await drv.close()

    asyncio.run(body())


def test_write_multiple_option_uses_fc16_for_one_register() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("sp", 3, writable=True)
            drv = ModbusDriver(device(slave.port, [p], write_multiple=True))
            slave.unit(1).defined = None
            await drv.write(p, 77)
            assert slave.unit(1).holding[3] == 77
            await drv.close()

    asyncio.run(body())


def test_bit_in_register_write_keeps_the_other_bits() -> None:
    async def body() -> None:
        async with tcp_slave({7: 0b1010_0000_0000_0001}) as slave:
            bit3 = point("b3", 7, type="bool", bit=3, writable=True)
            bit0 = point("b0", 7, type="bool", bit=0, writable=True)
            drv = ModbusDriver(device(slave.port, [bit3, bit0]))
            await drv.write(bit3, True)
            assert slave.unit(1).holding[7] == 0b1010_0000_0000_1001
            await drv.write(bit0, False)
            assert slave.unit(1).holding[7] == 0b1010_0000_0000_1000
            await drv.close()

    asyncio.run(body())


@pytest.mark.parametrize(
    ("kw", "value", "message"),
    [
        ({}, 50, "dev/p: is not writable; set writable = true in the point's config"),
        (
            {"writable": True, "min": 30, "max": 80},
            81,
            "dev/p: 81 is above max = 80; send at most 80",
        ),
        (
            {"writable": True, "min": 30, "max": 80},
            29.9,
            "dev/p: 29.9 is below min = 30; send at least 30",
        ),
        ({"writable": True}, "hot", "dev/p: expected a number, got 'hot'; send a number"),
        (
            {"writable": True, "type": "int16"},
            40000,
            "dev/p: 40000 does not fit a int16; send a smaller value",
        ),
    ],
)
def test_refused_writes_say_why_and_send_nothing(
    kw: dict[str, object], value: object, message: str
) -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, **kw)
            drv = ModbusDriver(device(slave.port, [p]))
            with pytest.raises(WriteError) as err:
                await drv.write(p, value)  # type: ignore[arg-type]
            assert str(err.value) == message
            assert slave.unit(1).writes == 0
            await drv.close()

    asyncio.run(body())


def test_device_refusing_a_write_is_a_write_error() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, writable=True)
            drv = ModbusDriver(device(slave.port, [p]))
            slave.faults(1).exception = 4
            with pytest.raises(
                WriteError, match="dev/p: the device refused the write: exception_04"
            ):
                await drv.write(p, 1)
            await drv.close()

    asyncio.run(body())
