"""Writes reach the simulated device's registers encoded with the point's type and order, and
are refused with a clear error when the point is not writable, out of range, not finite or
mistyped; a write the device did not confirm names its reason and whether it may have been
applied (failed vs unknown)."""

from __future__ import annotations

import asyncio
import math

import pytest
from helpers import free_port
from modbus_env import STEADY_S, device, point, tcp_slave

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
            drv = ModbusDriver(
                device(slave.port, [setpoint, energy, flow, pump], timeout_s=STEADY_S)
            )
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
            drv = ModbusDriver(device(slave.port, [p], write_multiple=True, timeout_s=STEADY_S))
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
            drv = ModbusDriver(device(slave.port, [bit3, bit0], timeout_s=STEADY_S))
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
            "dev/p: value 40000 does not fit int16; send a value int16 can hold",
        ),
        (
            {"writable": True, "type": "uint16"},
            70000,
            "dev/p: value 70000 does not fit uint16; send a value uint16 can hold",
        ),
    ],
)
def test_refused_writes_say_why_and_send_nothing(
    kw: dict[str, object], value: object, message: str
) -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, **kw)
            drv = ModbusDriver(device(slave.port, [p], timeout_s=STEADY_S))
            with pytest.raises(WriteError) as err:
                await drv.write(p, value)  # type: ignore[arg-type]
            assert str(err.value) == message
            assert slave.unit(1).writes == 0
            await drv.close()

    asyncio.run(body())


NOT_FINITE = [math.nan, math.inf, -math.inf]
FINITE_CASES = [
    {"type": "float32", "min": -100, "max": 100},
    {"type": "float64"},
    {"type": "int16", "min": -100, "max": 100},
    {"type": "uint32"},
    {"type": "bool", "bit": 2},
    {"table": "coil", "type": "bool"},
]


@pytest.mark.parametrize("value", NOT_FINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("kw", FINITE_CASES, ids=lambda kw: f"{kw.get('table', '')}{kw['type']}")
def test_nan_and_infinity_are_refused_for_every_point_type(
    kw: dict[str, object], value: float
) -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, writable=True, **kw)
            drv = ModbusDriver(device(slave.port, [p], timeout_s=STEADY_S))
            with pytest.raises(WriteError) as err:
                await drv.write(p, value)
            assert str(err.value) == f"dev/p: {value} is not a finite number; send a finite number"
            assert err.value.outcome == "refused"
            assert slave.unit(1).writes == 0, "nothing reached the device"
            await drv.close()

    asyncio.run(body())


def test_device_exception_is_a_failed_write_naming_the_exception() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, writable=True)
            drv = ModbusDriver(device(slave.port, [p], timeout_s=STEADY_S))
            slave.faults(1).exception = 2
            with pytest.raises(WriteError) as err:
                await drv.write(p, 1)
            assert str(err.value) == "dev/p: exception 02 illegal data address; nothing was written"
            assert err.value.outcome == "failed"
            slave.faults(1).exception = 4
            with pytest.raises(WriteError, match="exception 04 server device failure"):
                await drv.write(p, 1)
            await drv.close()

    asyncio.run(body())


def test_timed_out_write_is_unknown_not_failed_because_it_may_have_been_applied() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            p = point("p", 0, writable=True)
            drv = ModbusDriver(device(slave.port, [p], timeout_s=0.2))
            slave.faults(1).__dict__.update(delay_s=0.6, times=1)  # applies, answers late
            with pytest.raises(WriteError) as err:
                await drv.write(p, 1234)
            assert err.value.outcome == "unknown"
            assert str(err.value) == (
                "dev/p: timeout: outcome unknown; read the point back before retrying"
            )
            assert slave.unit(1).holding[0] == 1234, "the device did apply it"
            await drv.close()

    asyncio.run(body())


def test_refused_connection_is_a_failed_write() -> None:
    async def body() -> None:
        p = point("p", 0, writable=True)
        drv = ModbusDriver(device(free_port(), [p]))
        with pytest.raises(WriteError) as err:
            await drv.write(p, 1)
        assert (err.value.outcome, str(err.value)) == (
            "failed",
            "dev/p: connection refused; nothing was written",
        )
        await drv.close()

    asyncio.run(body())
