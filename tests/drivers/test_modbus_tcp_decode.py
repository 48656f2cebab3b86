"""Over a real socket: every type and byte order, strings, bits in registers, coils, discrete
inputs, input registers, scale and offset decode to the exact values the simulator encoded."""

from __future__ import annotations

import asyncio

import pytest
from modbus_env import STEADY_S, VALUES, device, group, point, tcp_slave

from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.reading import Quality
from gatewayd_sim.modbus import to_words


def test_every_type_and_order_decodes_exactly_over_tcp() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            m = slave.unit(1)
            pts, expect, address = [], {}, 0
            for dtype, value in VALUES.items():
                for order in ("ABCD", "CDAB", "BADC", "DCBA"):
                    words = to_words(value, dtype, order)
                    m.set_words("input", address, words)
                    pts.append(
                        point(f"{dtype}_{order}", address, table="input", type=dtype, order=order)
                    )
                    expect[f"{dtype}_{order}"] = value
                    address += len(words)
            m.holding[0:3] = [0x5055, 0x4D50, 0x3100]  # "PUMP1"
            pts.append(point("name", 0, type="string", length=3))
            m.holding[3:5] = [0x554D, 0x0050]  # "MUP" byte-swapped in each word, as BADC sends it
            pts.append(point("swapped", 3, type="string", length=2, order="BADC"))
            m.holding[10] = 0b0100_0000_0000_0000
            pts += [point("bit14", 10, type="bool", bit=14), point("bit0", 10, type="bool", bit=0)]
            m.holding[11] = to_words(-10, "int16")[0]
            pts.append(point("temp", 11, type="int16", scale=0.5, offset=-40))
            m.coils[100], m.discrete[7] = 1, 1
            pts += [
                point("coil", 100, table="coil", type="bool"),
                point("di", 7, table="discrete", type="bool"),
            ]
            expect.update(
                name="PUMP1", swapped="MUP", bit14=True, bit0=False, temp=-45.0, coil=True, di=True
            )
            drv = ModbusDriver(device(slave.port, pts, timeout_s=STEADY_S))
            readings = await drv.poll(group(drv.device))
            assert all(r.quality is Quality.GOOD for r in readings), readings
            assert {r.point.split("/")[1]: r.value for r in readings} == expect
            # floats compare exactly: float32 3.25 and float64 -1234.5678 survive the round trip
            assert drv.requests_per_group[group(drv.device).name] == 4
            await drv.close()

    asyncio.run(body())


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
def test_word_order_of_a_known_value(order: str) -> None:
    # 0x12345678 on the wire per order, independent of both encoders
    wire = {
        "ABCD": [0x1234, 0x5678],
        "CDAB": [0x5678, 0x1234],
        "BADC": [0x3412, 0x7856],
        "DCBA": [0x7856, 0x3412],
    }

    async def body() -> None:
        async with tcp_slave() as slave:
            slave.unit(1).holding[0:2] = wire[order]
            drv = ModbusDriver(device(slave.port, [point("v", 0, type="uint32", order=order)]))
            (r,) = await drv.poll(group(drv.device))
            assert r.value == 0x12345678
            await drv.close()

    asyncio.run(body())
