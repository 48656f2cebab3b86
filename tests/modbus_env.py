"""Builders shared by the Modbus driver tests: device configs and running simulated slaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd_sim.modbus import ModbusTcpSlave

# One value per data type, chosen to need every byte (and 64-bit exactness).
VALUES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -2_000_000_001,
    "uint32": 4_000_000_001,
    "int64": -9_000_000_000_000_000_001,
    "uint64": 18_000_000_000_000_000_001,
    "float32": 3.25,
    "float64": -1234.5678,
}


def point(pid: str, address: int, **kw: Any) -> PointConfig:
    return PointConfig(id=pid, table=kw.pop("table", "holding"), address=address, **kw)


def device(port: int, points: list[PointConfig], **kw: Any) -> DeviceConfig:
    kw.setdefault("timeout_s", 0.3)
    return device_config(
        ModbusTcpOptions,
        id=kw.pop("id", "dev"),
        driver="modbus_tcp",
        port=port,
        points=tuple(points),
        **kw,
    )


def group(dev: DeviceConfig) -> PollGroup:
    return PollGroup(dev.id, dev.interval_ms, dev.points)


@asynccontextmanager
async def tcp_slave(
    values: dict[int, int] | None = None, unit: int = 1
) -> AsyncIterator[ModbusTcpSlave]:
    slave = await ModbusTcpSlave().start()
    model = slave.unit(unit)
    for addr, v in (values or {}).items():
        model.holding[addr] = v
    try:
        yield slave
    finally:
        await slave.stop()
