"""Modbus drivers (TCP, RTU, RTU over TCP): poll groups in, Readings out.

Invariants:
- every point of a poll group comes back, good with its decoded value or bad with a reason code
  (pdu.Reason: timeout, disconnected, exception_NN, crc, short_reply, wrong_unit,
  wrong_function, wrong_transaction, bad_frame), except while the device is down (below);
  nothing raises into the scheduler;
- a reply is used only after it was checked against its request (see pdu.py and the links);
- exception 06 (busy) is retried `busy_retries` times after a growing delay;
- a merged read refused with exception 02 is split (contiguous runs, then single points) and
  merged again after a number of polls in which its parts all answered (planner.GroupPlan);
- a device failing `fail_threshold` polls in a row is down (`Driver.down`, one DeviceDown per
  outage): each poll then sends one short probe (the first point's registers) instead of the
  whole plan and returns no readings; the first probe that gets any answer runs the full poll,
  so good readings are back within one poll interval (plus connect time) of the device's return.
  Other devices never wait for it (each driver owns its link, or shares a bus whose lock is
  FIFO-fair);
- log lines are bounded per device whatever the flapping (health.FailureLog);
- a write either succeeds or raises WriteError whose outcome says what is known: refused (nothing
  sent), failed (the device said no, or the connection was refused) or unknown (no answer or an
  unusable one: the write may have been applied).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from gatewayd.backoff import exponential
from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.config.options import device_options
from gatewayd.reading import Quality, Reading, Value, now_ms

from ..base import Driver, PollGroup, WriteError, check_write
from ..health import FailureLog, Health
from . import options as O
from . import pdu as P
from .causes import cause, refused
from .decode import encode_point
from .planner import GroupPlan, ReadRequest, plan_requests
from .types import register_count

log = logging.getLogger("gatewayd.drivers.modbus")

T = TypeVar("T")
# After these the device is not answering at all: the rest of the poll would only time out too.
_LINK_DOWN = (P.Reason.TIMEOUT, P.Reason.DISCONNECTED)
# A write answered with these may still have been applied: 05 acknowledge (accepted, still
# working), 11 the gateway's target did not answer.
_WRITE_UNKNOWN_EXCEPTIONS = (5, 11)


class Link(Protocol):
    async def transact(
        self, unit: int, pdu: bytes, timeout_s: float, accept_units: tuple[int, ...] | str
    ) -> bytes: ...

    def close(self) -> None: ...


class ModbusDriver(Driver):
    """Modbus TCP; the RTU drivers differ only in the link they open."""

    options = O.TCP
    log_window_s = 60.0  # FailureLog's window: at most three lines per device per window

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.opts = device_options(device, O.ModbusOptions)
        self._link: Link | None = None
        self._key = ""  # the link's key in bus.py
        self._plans: dict[PollGroup, GroupPlan] = {}
        self._names = _PointNames(device.id)
        self.failure_log = FailureLog(log, device.id, self.log_window_s)
        self._health = Health(self.failure_log, self.opts.fail_threshold)

    def _tcp(self) -> O.ModbusTcpOptions:
        return device_options(self.device, O.ModbusTcpOptions)

    def _bus_key(self) -> str:
        loop = id(asyncio.get_running_loop())
        return f"tcp://{self._tcp().host}:{self._tcp().port}@{loop}"

    def _open_link(self) -> Link:
        from . import bus
        from .tcp import TcpLink

        # A host that is down drops SYNs: give up as soon as a request would have.
        timeout = max(1.0, self.device.timeout_s)
        o = self._tcp()
        return bus.acquire(self._bus_key(), lambda: TcpLink(o.host, o.port, timeout))

    async def _ask(self, request: bytes, parse: Callable[[bytes, bytes], T]) -> T:
        """One request and its checked answer; busy (exception 06) is retried after a delay."""
        if self._link is None:
            self._key = self._bus_key()
            self._link = self._open_link()
        dev, o = self.device, self.opts
        for attempt in range(o.busy_retries + 1):
            self.counters["requests"] += 1
            try:
                reply = await self._link.transact(o.unit, request, dev.timeout_s, o.accept_unit_ids)
                return parse(request, reply)
            except P.ModbusFault as f:
                if f.code != P.BUSY or attempt == o.busy_retries:
                    self.counters[f"faults.{f.reason}"] += 1
                    raise
                self.counters["busy_retries"] += 1
                # No cap of its own: busy_retries (at most 10) bounds it, and the poll deadline
                # bounds the whole poll.
                await asyncio.sleep(exponential(attempt, o.busy_delay_s, math.inf))
        raise AssertionError("unreachable")

    def _plan(self, group: PollGroup) -> GroupPlan:
        plan = self._plans.get(group)
        if plan is None:
            o = self.opts
            plan = self._plans[group] = GroupPlan(
                plan_requests(group.points, o.max_gap, o.max_registers, o.max_bits)
            )
            log.info(
                "poll_group_planned device=%s group=%s points=%d requests=%d",
                self.device.id,
                group.name,
                len(group.points),
                len(plan.requests),
            )
        return plan

    async def poll(self, group: PollGroup) -> list[Reading]:
        self.counters["polls"] += 1
        plan = self._plan(group)
        if self.down is not None and not await self._probe(plan):
            return []
        out: list[Reading] = []
        answered = False
        last: P.ModbusFault | None = None
        faulted: list[ReadRequest] = []
        todo = list(plan.requests)
        while todo:
            req = todo.pop(0)
            try:
                words = await self._ask(
                    P.read_request(req.table, req.address, req.count), P.parse_read
                )
            except P.ModbusFault as f:
                answered |= f.device_answered
                last = f
                faulted.append(req)
                parts = plan.split(req) if f.code == P.ILLEGAL_DATA_ADDRESS else []
                if parts:
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
                if f.kind in _LINK_DOWN:
                    for rest in todo:
                        out.extend(self._bad(rest.points, f.reason))
                    faulted += todo
                    break
                continue
            answered = True
            plan.answered(req)
            ts = now_ms()
            names = self._names
            out += [
                Reading(names[p.id], ts, v)
                for p, v in zip(req.points, req.decode(words), strict=True)
            ]
        if plan.splits:
            plan.end_poll(faulted)
        self.requests_per_group[group.name] = len(plan.requests)
        if answered:
            self._health.ok(time.monotonic())
        else:
            assert last is not None
            self._failed(last)
        self.down = self._health.down
        return out

    async def _probe(self, plan: GroupPlan) -> bool:
        """One short read of a down device: True when it answers at all (then poll it fully)."""
        self.counters["probes"] += 1
        p = plan.requests[0].points[0]
        try:
            request = P.read_request(p.table, p.address, register_count(p))
            await self._ask(request, P.parse_read)
        except P.ModbusFault as f:
            if f.device_answered:
                return True
            self._failed(f)
            return False
        return True

    def _failed(self, fault: P.ModbusFault) -> None:
        if self._health.failed(cause(fault), fault.reason, time.monotonic()):
            self.counters["outages"] += 1
        self.down = self._health.down

    def _bad(self, points: tuple[PointConfig, ...], reason: str) -> list[Reading]:
        ts = now_ms()
        return [Reading(self._pid(p), ts, None, Quality.BAD, reason) for p in points]

    def _pid(self, p: PointConfig) -> str:
        return f"{self.device.id}/{p.id}"

    async def write(self, point: PointConfig, value: Value) -> None:
        """Write one point; WriteError says why not and whether it may have been applied."""
        place = self._pid(point)
        words = self._encode_checked(point, value, place)
        try:
            if point.table == "coil":
                await self._write_coil(point.address, bool(words[0]))
            elif point.type == "bool":
                await self._write_bit(point, place, bool(words[0]))
            else:
                await self._write_words(point.address, words)
        except P.ModbusFault as f:
            raise _write_error(place, f) from f
        self.counters["writes"] += 1

    def _encode_checked(self, point: PointConfig, value: Value, place: str) -> list[int]:
        check_write(point, value, place)
        try:
            return encode_point(point, value)
        except (struct.error, OverflowError, ValueError) as exc:
            raise WriteError(
                place,
                f"value {value!r} does not fit {point.type}",
                f"send a value {point.type} can hold",
            ) from exc

    async def _write_coil(self, address: int, on: bool) -> None:
        if self.opts.write_multiple:
            await self._ask(P.write_coils_request(address, [on]), P.check_write)
        else:
            await self._ask(P.write_coil_request(address, on), P.check_write)

    async def _write_words(self, address: int, words: list[int]) -> None:
        if len(words) == 1 and not self.opts.write_multiple:
            await self._ask(P.write_register_request(address, words[0]), P.check_write)
        else:
            await self._ask(P.write_registers_request(address, words), P.check_write)

    async def _write_bit(self, point: PointConfig, place: str, on: bool) -> None:
        # Read-modify-write so the other 15 bits keep their values. Not atomic: a device that
        # changes the register between the two requests loses that change (fc 22 would not, but
        # few devices implement it).
        try:
            (word,) = await self._ask(P.read_request("holding", point.address, 1), P.parse_read)
        except P.ModbusFault as f:
            raise WriteError(
                place,
                f"{cause(f)} reading the register before setting its bit",
                "nothing was written",
                "failed",
            ) from f
        mask = 1 << (point.bit or 0)
        await self._write_words(point.address, [word | mask if on else word & ~mask])

    async def close(self) -> None:
        from . import bus

        if self._link is not None:
            bus.release(self._key)
            self._link = None


def _write_error(place: str, fault: P.ModbusFault) -> WriteError:
    """A failed write request as a WriteError: `failed` only when it cannot have been applied."""
    if fault.code is not None and fault.code not in _WRITE_UNKNOWN_EXCEPTIONS:
        return WriteError(place, cause(fault), "nothing was written", "failed")
    if refused(fault):
        return WriteError(place, cause(fault), "nothing was written", "failed")
    return WriteError(
        place, f"{cause(fault)}: outcome unknown", "read the point back before retrying", "unknown"
    )


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

    options = O.RTU

    def _bus_key(self) -> str:
        return device_options(self.device, O.ModbusRtuOptions).serial_port

    def _open_link(self) -> Link:
        from . import bus
        from .rtu import RtuLink

        d = self.device.options
        assert isinstance(d, O.ModbusRtuOptions | O.ModbusRtuOverTcpOptions)
        url = self._bus_key()
        return bus.acquire(
            url, lambda: RtuLink(url, d.baud, d.parity, d.stopbits, d.bytesize, d.request_delay_s)
        )


class ModbusRtuOverTcpDriver(ModbusRtuDriver):
    """RTU frames through a TCP serial gateway (host, port): a shared bus like a serial port."""

    options = O.RTU_OVER_TCP

    def _bus_key(self) -> str:
        return f"socket://{self._tcp().host}:{self._tcp().port}"
