"""OPC UA client driver: subscriptions and polled reads of one server, through the plugin contract.

Invariants:
- Written as a third party would: it imports only the public contract (Driver, check_write,
  OptionSet, Reading) and asyncua, which is imported lazily (the `opcua` extra).
- A reading carries the server's SourceTimestamp (else its ServerTimestamp, else now). A status
  code that is not Good makes a BAD (or UNCERTAIN) reading whose reason is the code's name
  (`BadSensorFailure`) and whose value is None for Bad.
- Memory is bounded: notifications wait for the next poll in per-group queues holding at most
  `queue_max` in all; past it the oldest is dropped and counted (`notifications_dropped`).
- A lost connection (transport, session timeout, watchdog) is noticed through asyncua's
  connection_lost_callback or a failing request; the next poll after the backoff connects a new
  session and re-creates the subscription and every monitored item. Until then a poll returns
  BAD readings with the reason (`disconnected`, `security_refused: <code>`, ...), and one
  WARNING per outage is logged.
- A poll fails when there is no session or its read fails. After `fail_threshold` failed polls
  in a row the server is down as a Modbus device is (`Driver.down`: one DeviceDown per outage,
  reason = the reason's code, cause = its words, since = the first failed poll); while down a
  failed poll returns no readings (the outage is one event), and the first poll with a session
  and a good read ends it.
- poll() and write() never raise anything but WriteError (write) into the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections import deque
from datetime import datetime
from typing import Any

from gatewayd.backoff import exponential
from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers import (
    DeviceDown,
    Driver,
    PollGroup,
    WriteError,
    check_write,
    poll_groups,
)
from gatewayd.drivers.options import device_options
from gatewayd.reading import Quality, Reading, Value, now_ms

from .options import OPTIONS, OpcUaOptions, OpcUaPoint

log = logging.getLogger("gatewayd.drivers.opcua")

_VARIANT = {
    "bool": "Boolean",
    "int16": "Int16",
    "uint16": "UInt16",
    "int32": "Int32",
    "uint32": "UInt32",
    "int64": "Int64",
    "uint64": "UInt64",
    "float32": "Float",
    "float64": "Double",
    "string": "String",
}


def _asyncua() -> tuple[Any, Any]:
    try:
        asyncua = importlib.import_module("asyncua")
    except ImportError as exc:  # the optional extra is missing
        raise RuntimeError(
            f"the opcua driver needs asyncua ({exc}); install gatewayd[opcua]"
        ) from exc
    # asyncua logs every lost connection with a traceback; the driver logs each outage once,
    # with its reason, and puts the reason on the readings.
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    return asyncua, importlib.import_module("asyncua.ua")


class Refused(Exception):
    """The server or the trust list refused the session: the reason names the code."""


class OpcUaDriver(Driver):
    options = OPTIONS

    def __init__(self, device: DeviceConfig) -> None:
        super().__init__(device)
        self.opts: OpcUaOptions = device_options(device, OpcUaOptions)
        self._client: Any = None
        self._sub: Any = None
        self._nodes: dict[str, Any] = {}  # point id -> asyncua Node
        self._handles: dict[int, PointConfig] = {}  # monitored item client handle -> point
        self._group_of: dict[str, str] = {}  # point id -> poll group name
        for g in poll_groups(device):
            for p in g.points:
                self._group_of[p.id] = g.name
        self._queues: dict[str, deque[Reading]] = {g: deque() for g in set(self._group_of.values())}
        self._queued = 0
        self._lost: str | None = None  # why the session is gone, set from asyncua's callbacks
        self._failures = 0
        self._retry_at = 0.0  # monotonic: no connect attempt before this
        self._reason = "disconnected"
        self._streak = 0  # failed polls in a row
        self._first_fail_ms = 0

    # -- connection -------------------------------------------------------------------------

    async def _ensure(self) -> bool:
        if self._client is not None and self._lost is None:
            return True
        if self._client is not None:
            await self._drop(self._lost or "disconnected")
            self._failures = 1  # the outage is logged: its reconnect attempts go to DEBUG
        if time.monotonic() < self._retry_at:
            return False
        try:
            await self._connect()
        except Exception as exc:  # every failure is a reason on the readings, never a raise
            await self._drop(_reason(exc))
            self._failures += 1
            o = self.opts
            delay = exponential(self._failures - 1, o.backoff_base_s, o.backoff_cap_s)
            self._retry_at = time.monotonic() + delay
            return False
        if self._failures:
            log.info("opcua_connected device=%s endpoint=%s", self.device.id, self.opts.endpoint)
        self._failures = 0
        return True

    async def _connect(self) -> None:
        asyncua, ua = _asyncua()
        o = self.opts
        client = asyncua.Client(o.endpoint, timeout=o.request_timeout_s)
        client.session_timeout = int(o.session_timeout_s * 1000)
        client.application_uri = o.application_uri
        client.name = client.description = f"gatewayd {self.device.id}"
        if o.username is not None:
            client.set_user(o.username)
            client.set_password(o.password or "")
        if o.security_policy != "None":
            await self._secure(client, asyncua, ua)
        self._lost = None

        async def lost(exc: Exception) -> None:
            self._lost = f"disconnected: {type(exc).__name__}"

        client.connection_lost_callback = lost
        self._client = client
        await client.connect()
        await self._resolve(ua)
        await self._subscribe(ua)

    async def _secure(self, client: Any, asyncua: Any, ua: Any) -> None:
        """Basic256Sha256 with our certificate, pinned to a server certificate of the trust list."""
        from cryptography.hazmat.primitives import serialization

        security_policies: Any = importlib.import_module("asyncua.crypto.security_policies")
        uacrypto: Any = importlib.import_module("asyncua.crypto.uacrypto")

        o = self.opts
        mode = getattr(ua.MessageSecurityMode, o.security_mode)
        policy = security_policies.SecurityPolicyBasic256Sha256
        probe = asyncua.Client(o.endpoint, timeout=o.request_timeout_s)
        endpoints = await probe.connect_and_get_server_endpoints()
        try:
            endpoint = asyncua.Client.find_endpoint(endpoints, mode, policy.URI)
        except ua.UaError as exc:
            raise Refused(
                f"security_refused: the server offers no Basic256Sha256 {o.security_mode} endpoint"
            ) from exc
        offered = uacrypto.x509_from_der(endpoint.ServerCertificate)
        trusted = []
        for path in o.trust:
            trusted.append(await uacrypto.load_certificate(path))
        if not any(offered == t for t in trusted):
            raise Refused(
                "security_refused: the server's certificate is not in the trust list "
                f"({offered.subject.rfc4514_string()})"
            )
        der = offered.public_bytes(serialization.Encoding.DER)
        await client.set_security(
            policy, o.certificate, o.private_key, server_certificate=der, mode=mode
        )

    async def _resolve(self, ua: Any) -> None:
        self._nodes = {}
        for p in self.device.points:
            po: OpcUaPoint = p.options
            if po.node:
                self._nodes[p.id] = self._client.get_node(po.node)
            else:
                steps = po.browse_path.split("/")
                start = self._client.nodes.root
                if steps and steps[0] == "0:Root":
                    steps = steps[1:]
                self._nodes[p.id] = await start.get_child(steps)

    async def _subscribe(self, ua: Any) -> None:
        subscribed = [p for p in self.device.points if p.options.mode == "subscribe"]
        if not subscribed:
            return
        self._sub = await self._client.create_subscription(
            self.opts.publishing_interval_ms, _Handler(self)
        )
        requests = []
        self._handles = {}
        for p in subscribed:
            po: OpcUaPoint = p.options
            mfilter = None
            if po.deadband > 0:
                mfilter = ua.DataChangeFilter()
                mfilter.Trigger = ua.DataChangeTrigger.StatusValue
                mfilter.DeadbandType = 1 if po.deadband_type == "absolute" else 2
                mfilter.DeadbandValue = po.deadband
            req = self._sub._make_monitored_item_request(  # the one way to pass all four
                self._nodes[p.id],
                ua.AttributeIds.Value,
                mfilter,
                po.queue_size,
                ua.MonitoringMode.Reporting,
                po.sampling_interval_ms,
            )
            self._handles[req.RequestedParameters.ClientHandle] = p
            requests.append(req)
        results = await self._sub.create_monitored_items(requests)
        for req, res in zip(requests, results, strict=True):
            if isinstance(res, ua.StatusCode):  # this item failed; the others stand
                p = self._handles.pop(req.RequestedParameters.ClientHandle)
                self._notify(p, None, (Quality.BAD, res.name))

    async def _drop(self, reason: str) -> None:
        if reason != "closed":  # one WARNING per outage; its retries at DEBUG
            log.log(
                logging.WARNING if self._failures == 0 else logging.DEBUG,
                "opcua_unavailable device=%s endpoint=%s reason=%s",
                self.device.id,
                self.opts.endpoint,
                reason,
            )
        self._reason = reason
        client, self._client, self._sub = self._client, None, None
        self._lost = None
        if client is not None:
            client.connection_lost_callback = None
            # A session already gone has nothing to release.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)

    # -- notifications ----------------------------------------------------------------------

    def _notify(self, p: PointConfig, data_value: Any, status: tuple[Quality, str] | None) -> None:
        q = self._queues[self._group_of[p.id]]
        if self._queued >= self.opts.queue_max:
            victim = q if q else max(self._queues.values(), key=len)
            victim.popleft()
            self._queued -= 1
            self.counters["notifications_dropped"] += 1
        q.append(self._reading(p, data_value, status))
        self._queued += 1

    def _reading(self, p: PointConfig, dv: Any, status: tuple[Quality, str] | None) -> Reading:
        pid = f"{self.device.id}/{p.id}"
        if dv is None:
            quality, reason = status or (Quality.BAD, "no_value")
            return Reading(pid, now_ms(), None, quality, reason)
        ts: Any = dv.SourceTimestamp or dv.ServerTimestamp
        ts_ms = int(ts.timestamp() * 1000) if ts is not None else now_ms()
        code = dv.StatusCode
        if code is not None and not code.is_good():
            quality = Quality.UNCERTAIN if code.is_uncertain() else Quality.BAD
            value = _value(p, dv) if quality is Quality.UNCERTAIN else None
            return Reading(pid, ts_ms, value[0] if value else None, quality, code.name)
        converted = _value(p, dv)
        if converted is None:
            vt = dv.Value.VariantType.name if dv.Value is not None else "Null"
            return Reading(pid, ts_ms, None, Quality.BAD, f"unsupported_type:{vt}")
        return Reading(pid, ts_ms, converted[0])

    # -- the contract -----------------------------------------------------------------------

    async def poll(self, group: PollGroup) -> list[Reading]:
        connected = await self._ensure()
        if not connected:
            return self._poll_failed(group.points)
        out = list(self._queues[group.name])
        self._queued -= len(out)
        self._queues[group.name].clear()
        polled = [p for p in group.points if p.options.mode == "poll"]
        if polled:
            try:
                values = await self._client.read_attributes([self._nodes[p.id] for p in polled])
            except Exception as exc:
                await self._drop(_reason(exc))
                return out + self._poll_failed(tuple(polled))
            self.counters["reads"] += 1
            out += [self._reading(p, dv, None) for p, dv in zip(polled, values, strict=True)]
        self._streak, self.down = 0, None
        return out

    def _poll_failed(self, points: tuple[PointConfig, ...] | list[PointConfig]) -> list[Reading]:
        """Count a failed poll: BAD readings with the reason, none once the server is down."""
        was_down = self.down is not None
        self._streak += 1
        if self._streak == 1:
            self._first_fail_ms = now_ms()
        if not was_down and self._streak >= self.opts.fail_threshold:
            code, _, words = self._reason.partition(": ")
            self.down = DeviceDown(words or code, code, self._first_fail_ms)
            self.counters["outages"] += 1
        if was_down:
            return []
        ts = now_ms()
        return [
            Reading(f"{self.device.id}/{p.id}", ts, None, Quality.BAD, self._reason) for p in points
        ]

    async def write(self, point: PointConfig, value: Value) -> None:
        place = f"{self.device.id}/{point.id}"
        check_write(point, value, place)
        if not await self._ensure():
            raise WriteError(place, f"not connected ({self._reason})", "retry later", "failed")
        _, ua = _asyncua()
        po: OpcUaPoint = point.options
        raw: Any = value
        if isinstance(value, int | float) and not isinstance(value, bool) and po.type != "string":
            raw = (value - po.offset) / po.scale
            if not po.type.startswith("float"):
                raw = round(raw)
        variant = ua.Variant(raw, getattr(ua.VariantType, _VARIANT[po.type]))
        try:
            await self._nodes[point.id].write_value(ua.DataValue(variant))
        except ua.UaStatusCodeError as exc:
            raise WriteError(
                place, f"refused by the server: {_reason(exc)}", None, "failed"
            ) from exc
        except Exception as exc:
            await self._drop(_reason(exc))
            raise WriteError(
                place, f"{_reason(exc)}: outcome unknown", "read back", "unknown"
            ) from exc

    async def close(self) -> None:
        await self._drop("closed")


class _Handler:
    """asyncua's subscription callbacks, into the driver's bounded queues."""

    def __init__(self, driver: OpcUaDriver) -> None:
        self.driver = driver

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        p = self.driver._handles.get(data.monitored_item.ClientHandle)
        if p is not None:
            self.driver._notify(p, data.monitored_item.Value, None)

    def status_change_notification(self, status: Any) -> None:
        if not status.Status.is_good():
            self.driver._lost = f"subscription_lost: {status.Status.name}"


def _value(p: PointConfig, dv: Any) -> tuple[Value] | None:
    """The reading's value from a DataValue, scaled; None for a type a reading cannot hold."""
    v: Any = dv.Value.Value if dv.Value is not None else None
    if isinstance(v, bool | str):
        return (v,)
    if isinstance(v, int | float):
        if p.scale == 1.0 and p.offset == 0.0:
            return (v,)
        return (v * p.scale + p.offset,)
    text = getattr(v, "Text", None)  # LocalizedText
    if isinstance(text, str):
        return (text,)
    if isinstance(v, datetime):  # DateTime: epoch milliseconds
        return (int(v.timestamp() * 1000),)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(getattr(exc, "code", None), int) and type(exc).__name__.startswith("Bad"):
        code = type(exc).__name__  # asyncua raises one class per status code, named after it
        if "Security" in code or "Certificate" in code:
            return (
                f"security_refused: {code} (is the client certificate in the server's trust list?)"
            )
        return code
    if isinstance(exc, ConnectionRefusedError):
        return "disconnected: connection refused"
    if isinstance(exc, OSError):
        return f"disconnected: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    return f"error: {type(exc).__name__}: {exc}"[:200]
