"""Modbus TCP driver on pymodbus's asyncio client.

Every poll either returns a good reading per point or a bad one with a reason; nothing raises into
the scheduler. pymodbus's own reconnect loop is switched off: the driver reconnects when it next
polls, no more often than its backoff allows, so a dead device costs one connect attempt per step.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.reading import Quality, Reading, Value, now_ms

from ..base import Driver, PollGroup
from .decode import decode_point, encode_point
from .planner import ReadRequest, plan_requests

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusTcpClient

log = logging.getLogger("gatewayd.drivers.modbus")

_READ = {
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
    "input": "read_input_registers",
    "holding": "read_holding_registers",
}


class ModbusError(Exception):
    """A request failed; `reason` is the bad-quality reason code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModbusDriver(Driver):
    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self._client: AsyncModbusTcpClient | None = None
        self._plans: dict[PollGroup, list[ReadRequest]] = {}
        self._next_connect = 0.0  # monotonic
        self._connect_failures = 0

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_connect:
            raise ModbusError("disconnected")
        if self._client is None:
            from pymodbus.client import AsyncModbusTcpClient

            self._client = AsyncModbusTcpClient(
                self.device.host,
                port=self.device.port,
                timeout=self.device.timeout_s,
                retries=0,
                reconnect_delay=0,
                name=self.device.id,
            )
        if await self._client.connect():
            if self._connect_failures:
                log.info(
                    "device_reconnected device=%s after=%d", self.device.id, self._connect_failures
                )
            self._connect_failures = 0
            return self._client
        self._connect_failures += 1
        self._next_connect = now + min(30.0, 0.5 * 2 ** min(self._connect_failures, 6))
        if self._connect_failures == 1:
            log.warning(
                "device_unreachable device=%s host=%s port=%d",
                self.device.id,
                self.device.host,
                self.device.port,
            )
        raise ModbusError("disconnected")

    async def poll(self, group: PollGroup) -> list[Reading]:
        plan = self._plans.get(group)
        if plan is None:
            plan = self._plans[group] = plan_requests(group.points)
        out: list[Reading] = []
        for req in plan:
            try:
                words = await self._read(req)
            except ModbusError as exc:
                ts = now_ms()
                out.extend(
                    Reading(self._pid(p), ts, None, Quality.BAD, exc.reason) for p in req.points
                )
                continue
            ts = now_ms()
            for p in req.points:
                at = p.address - req.address
                out.append(
                    Reading(self._pid(p), ts, decode_point(p, words[at : at + p.register_count]))
                )
        return out

    def _pid(self, p: PointConfig) -> str:
        return f"{self.device.id}/{p.id}"

    async def _read(self, req: ReadRequest) -> list[int]:
        from pymodbus.exceptions import ModbusException

        client = await self._connected()
        try:
            rr: Any = await getattr(client, _READ[req.table])(
                req.address, count=req.count, device_id=self.device.unit
            )
        except (ModbusException, OSError, TimeoutError) as exc:
            client.close()
            raise ModbusError("timeout" if "timeout" in str(exc).lower() else "io_error") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise ModbusError(f"exception_{code:02d}")
        if req.table in ("coil", "discrete"):
            bits = list(rr.bits)
            if len(bits) < req.count:
                raise ModbusError("short_reply")
            return [int(b) for b in bits[: req.count]]
        regs = list(rr.registers)
        if len(regs) != req.count:  # pymodbus accepts short replies silently
            raise ModbusError("short_reply")
        return regs

    async def write(self, point: PointConfig, value: Value) -> None:
        from pymodbus.exceptions import ModbusException

        client = await self._connected()
        words = encode_point(point, value)
        try:
            if point.table == "coil":
                rr: Any = await client.write_coil(
                    point.address, bool(words[0]), device_id=self.device.unit
                )
            elif len(words) == 1:
                rr = await client.write_register(
                    point.address, words[0], device_id=self.device.unit
                )
            else:
                rr = await client.write_registers(point.address, words, device_id=self.device.unit)
        except (ModbusException, OSError, TimeoutError) as exc:
            raise ModbusError("io_error") from exc
        if rr.isError():
            raise ModbusError(f"exception_{getattr(rr, 'exception_code', 0):02d}")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
