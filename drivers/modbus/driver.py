"""Modbus drivers (TCP, RTU, RTU over TCP): poll groups in, Readings out.

Invariants:
- every point of a poll group comes back, good with its decoded value or bad with a reason code
  (timeout, disconnected, exception_NN, crc, short_reply, wrong_unit, wrong_function,
  wrong_transaction, bad_frame, backoff); nothing raises into the scheduler;
- a reply is used only after it was checked against its request (see pdu.py and the links);
- exception 06 (busy) is retried `busy_retries` times after a growing delay;
- a merged read refused with exception 02 is split (contiguous runs, then single points), and the
  split is remembered for the poll group;
- a device failing `fail_threshold` polls in a row is skipped for an exponential, capped backoff,
  then polled again; other devices never wait for it (each driver owns its link, or shares a bus
  whose lock is FIFO-fair).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.reading import Quality, Reading, Value, now_ms

from ..base import Driver, PollGroup, WriteError, check_write
from ..health import Health
from . import pdu as P
from .decode import encode_point
from .planner import ReadRequest, plan_requests, split_request

log = logging.getLogger("gatewayd.drivers.modbus")

T = TypeVar("T")
# After these the device is not answering at all: the rest of the poll would only time out too.
_LINK_DOWN = ("timeout", "disconnected")


class Link(Protocol):
    async def transact(
        self, unit: int, pdu: bytes, timeout_s: float, accept_units: tuple[int, ...] | str
    ) -> bytes: ...

    def close(self) -> None: ...


class ModbusDriver(Driver):
    """Modbus TCP; the RTU drivers differ only in the link they open."""

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self._link: Link | None = None
        self._key = ""  # the link's key in bus.py
        self._plans: dict[PollGroup, list[ReadRequest]] = {}
        self._names = _PointNames(device.id)
        self._health = Health(device.fail_threshold, device.backoff_base_s, device.backoff_cap_s)
        self._failing = False  # for logging the first failure at WARNING, repeats at DEBUG

    def _bus_key(self) -> str:
        loop = id(asyncio.get_running_loop())
        return f"tcp://{self.device.host}:{self.device.port}@{loop}"

    def _open_link(self) -> Link:
        from . import bus
        from .tcp import TcpLink

        # A host that is down drops SYNs: give up as soon as a request would have.
        timeout = max(1.0, self.device.timeout_s)
        return bus.acquire(
            self._bus_key(), lambda: TcpLink(self.device.host, self.device.port, timeout)
        )

    async def _ask(self, request: bytes, parse: Callable[[bytes, bytes], T]) -> T:
        """One request and its checked answer; busy (exception 06) is retried after a delay."""
        if self._link is None:
            self._key = self._bus_key()
            self._link = self._open_link()
        dev = self.device
        for attempt in range(dev.busy_retries + 1):
            self.counters["requests"] += 1
            try:
                reply = await self._link.transact(
                    dev.unit, request, dev.timeout_s, dev.accept_unit_ids
                )
                return parse(request, reply)
            except P.ModbusFault as f:
                if f.reason != f"exception_{P.BUSY:02d}" or attempt == dev.busy_retries:
                    self.counters[f"faults.{f.reason}"] += 1
                    raise
                self.counters["busy_retries"] += 1
                await asyncio.sleep(dev.busy_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    async def poll(self, group: PollGroup) -> list[Reading]:
        self.counters["polls"] += 1
        if not self._health.ready(time.monotonic()):
            self.counters["polls_skipped"] += 1
            return self._bad(group.points, "backoff")
        plan = self._plans.get(group)
        if plan is None:
            d = self.device
            plan = self._plans[group] = plan_requests(
                group.points, d.max_gap, d.max_registers, d.max_bits
            )
            log.info(
                "poll_group_planned device=%s group=%s points=%d requests=%d",
                d.id,
                group.name,
                len(group.points),
                len(plan),
            )
        out: list[Reading] = []
        answered = False
        last_fault = ""
        todo = list(plan)
        while todo:
            req = todo.pop(0)
            try:
                words = await self._ask(
                    P.read_request(req.table, req.address, req.count), P.parse_read
                )
            except P.ModbusFault as f:
                answered |= f.device_answered
                last_fault = str(f)  # the reason and its cause (e.g. why a port will not open)
                parts = split_request(req) if f.reason == "exception_02" else []
                if len(parts) > 1:
                    plan[plan.index(req) : plan.index(req) + 1] = parts
                    todo[0:0] = parts
                    self.counters["splits"] += 1
                    log.info(
                        "request_split device=%s at=%d into=%d",
                        self.device.id,
                        req.address,
                        len(parts),
                    )
                    continue
                out.extend(self._bad(req.points, f.reason))
                if f.reason in _LINK_DOWN:
                    for rest in todo:
                        out.extend(self._bad(rest.points, f.reason))
                    break
                continue
            answered = True
            ts = now_ms()
            names = self._names
            out += [
                Reading(names[p.id], ts, v)
                for p, v in zip(req.points, req.decode(words), strict=True)
            ]
        self.requests_per_group[group.name] = len(plan)
        self._note_health(answered, last_fault)
        return out

    def _note_health(self, answered: bool, fault: str) -> None:
        if self._health.record(answered, time.monotonic()):
            self.counters["backoffs"] += 1
        if not answered and not self._failing:
            self._failing = True
            log.warning("device_failing device=%s reason=%s", self.device.id, fault)
        elif not answered:
            log.debug(
                "device_failing device=%s reason=%s streak=%d",
                self.device.id,
                fault,
                self._health.streak,
            )
        elif self._failing:
            self._failing = False
            log.info("device_recovered device=%s", self.device.id)

    def _bad(self, points: tuple[PointConfig, ...], reason: str) -> list[Reading]:
        ts = now_ms()
        return [Reading(self._pid(p), ts, None, Quality.BAD, reason) for p in points]

    def _pid(self, p: PointConfig) -> str:
        return f"{self.device.id}/{p.id}"

    async def write(self, point: PointConfig, value: Value) -> None:
        """Write one point; refuses (WriteError) what is not writable, out of range or mistyped."""
        place = self._pid(point)
        words = self._encode_checked(point, value, place)
        try:
            if point.table == "coil":
                await self._write_coil(point.address, bool(words[0]))
            elif point.type == "bool":
                await self._write_bit(point, bool(words[0]))
            else:
                await self._write_words(point.address, words)
        except P.ModbusFault as f:
            raise WriteError(
                place, f"the device refused the write: {f.reason}", "check the device"
            ) from f
        self.counters["writes"] += 1

    def _encode_checked(self, point: PointConfig, value: Value, place: str) -> list[int]:
        check_write(point, value, place)
        try:
            return encode_point(point, value)
        except (struct.error, OverflowError, ValueError) as exc:
            raise WriteError(
                place, f"{value!r} does not fit a {point.type}", "send a smaller value"
            ) from exc

    async def _write_coil(self, address: int, on: bool) -> None:
        if self.device.write_multiple:
            await self._ask(P.write_coils_request(address, [on]), P.check_write)
        else:
            await self._ask(P.write_coil_request(address, on), P.check_write)

    async def _write_words(self, address: int, words: list[int]) -> None:
        if len(words) == 1 and not self.device.write_multiple:
            await self._ask(P.write_register_request(address, words[0]), P.check_write)
        else:
            await self._ask(P.write_registers_request(address, words), P.check_write)

    async def _write_bit(self, point: PointConfig, on: bool) -> None:
        # Read-modify-write so the other 15 bits keep their values. Not atomic: a device that
        # changes the register between the two requests loses that change (fc 22 would not, but
        # few devices implement it).
        (word,) = await self._ask(P.read_request("holding", point.address, 1), P.parse_read)
        mask = 1 << (point.bit or 0)
        await self._write_words(point.address, [word | mask if on else word & ~mask])

    async def close(self) -> None:
        from . import bus

        if self._link is not None:
            bus.release(self._key)
            self._link = None


class _PointNames(dict[str, str]):
    """Point id -> "device/point", each made once: a poll reuses the string (and its hash)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.prefix = f"{device}/"

    def __missing__(self, point: str) -> str:
        name = self[point] = self.prefix + point
        return name


class ModbusRtuDriver(ModbusDriver):
    """Modbus RTU on a serial port; the devices on one port share it (see bus.py)."""

    def _bus_key(self) -> str:
        return self.device.serial_port

    def _open_link(self) -> Link:
        from . import bus
        from .rtu import RtuLink

        d = self.device
        url = self._bus_key()
        return bus.acquire(
            url, lambda: RtuLink(url, d.baud, d.parity, d.stopbits, d.bytesize, d.request_delay_s)
        )


class ModbusRtuOverTcpDriver(ModbusRtuDriver):
    """RTU frames through a TCP serial gateway (host, port): a shared bus like a serial port."""

    def _bus_key(self) -> str:
        return f"socket://{self.device.host}:{self.device.port}"
