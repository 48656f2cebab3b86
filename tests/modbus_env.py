"""Builders shared by the Modbus driver tests: device configs and running simulated slaves."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus import encode_point
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality, Reading
from gatewayd_sim.modbus import ModbusTcpSlave
from gatewayd_sim.procs import wait_for

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


# For tests that expect every reply (no fault): a reply timeout a loaded CI box cannot hit.
# The 0.3 s default keeps the fault tests' timeouts quick.
STEADY_S = 5.0


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


def wrong_good(readings: list[Reading], points: dict[str, PointConfig], slave: Any) -> list[str]:
    """Good readings whose value the hostile slave never sent for that point's registers."""
    sent = slave.true_words()
    out = []
    for r in readings:
        if r.quality is not Quality.GOOD:
            continue
        p = points[r.point.split("/", 1)[1]]
        fc = 3 if p.table == "holding" else 4
        words = tuple(encode_point(p, r.value))  # type: ignore[arg-type]
        if not any(run[: len(words)] == words for run in sent.get((fc, p.address), ())):
            out.append(f"{r.point}={r.value!r}")
    return out


def bad_without_reason(readings: list[Reading]) -> list[Reading]:
    return [r for r in readings if r.quality is not Quality.GOOD and not r.reason]


def socat_pair(socat: str, where: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[str, str]:
    """A plain socat pty pair (no pacing: bytes pass as fast as the kernel moves them)."""
    a, b = where / "pty-a", where / "pty-b"
    p = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_for(lambda: a.exists() and b.exists(), 10, "socat made no pty pair")
    return str(a), str(b)
