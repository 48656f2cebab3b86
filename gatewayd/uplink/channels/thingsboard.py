"""ThingsBoard's channel: the gateway MQTT API, with the gateway as a ThingsBoard gateway device.

- configuration: the gateway device's shared attribute `gatewayd` (CONFIG_KEY), the whole
  document as a JSON object in the form of the TOML file (with its `version`), or a string
  holding a JWS when [remote_config] require_signed. At every connect the channel asks for it
  (`v1/devices/me/attributes/request/{n}` with `sharedKeys`, answered on
  `.../attributes/response/{n}` as `{"shared": {...}}`); then every update ThingsBoard pushes on
  `v1/devices/me/attributes` (only the attributes that changed) that names `gatewayd` hands on
  the new document;
- commands: server-side RPC, to the gateway device (`v1/devices/me/rpc/request/{id}`, answered
  on `v1/devices/me/rpc/response/{id}`) or to a field device behind it (`v1/gateway/rpc` with
  `{"device", "data": {"id", "method", "params"}}`, answered there with `{"device", "id",
  "data"}`). Method `write` with params `{"point", "value"}` is commands.py's range-checked
  write (through a field device, `point` may leave out the device: "setpoint" is
  "plc/setpoint"; params given as JSON text, as some dashboard widgets send them, are read
  too); any other method is a command by that name (`ping`; the rest are refused by
  commands.py as unknown). The answer is commands.py's result (`status`, `reason`, `ts`) with
  the RPC's own id;
- state: the state document's top-level members as the gateway device's client attributes
  (`v1/devices/me/attributes`), only those that changed since the last report of this session,
  at most once per REPORT_MIN_INTERVAL_S (the newest waits), in messages under
  ThingsBoard's 64 KB; the config outcomes are its `config` and `config_recent`;
- field devices: `v1/gateway/connect` for each device the state document's `devices` shows up,
  `v1/gateway/disconnect` when it goes down or leaves the configuration (device_health.py
  decides; the state document carries it, so the channel needs no hook of its own). Every new
  session announces the devices that are up again. ThingsBoard also opens a device's session on
  its first telemetry through the gateway, so a down device's last records may mark it active
  again until its inactivity timeout; the disconnect is what the gateway knows.

Invariants:
- the document handed on is serialised canonically (sorted keys, or the JWS string as it came),
  and the same document is not handed on twice in a row: the request at a reconnect that finds
  nothing new is no push (ConfigManager ignores a redelivery across an uplink restart too);
- an attributes answer older than an update received meanwhile is ignored (the update is newer);
  a request unanswered for REQUEST_TIMEOUT_S is sent again;
- an RPC that cannot be read is answered as refused (at the next tick: `incoming` has no client);
- ThingsBoard keeps no retained messages and ignores the retain flag: nothing here is retained.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gatewayd.remote_config.commands import parse_command

from .base import CommandIn, ConfigPush, Incoming

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")

CONFIG_KEY = "gatewayd"  # the shared attribute holding the configuration
REQUEST_TIMEOUT_S = 10.0
REPORT_MIN_INTERVAL_S = 2.0
# ThingsBoard's MQTT transport refuses a message over 64 KB (NETTY_MAX_PAYLOAD_SIZE); some room
# for the topic and the packet's header.
ATTRIBUTES_MAX_BYTES = 64 * 1024 - 512
MAX_PENDING_RPCS = 256

ME = "v1/devices/me/"
ATTRIBUTES = ME + "attributes"
ATTR_RESPONSE = ME + "attributes/response/"
RPC_REQUEST = ME + "rpc/request/"
GATEWAY_RPC = "v1/gateway/rpc"
CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"

_Rpc = tuple[str | None, Any]  # (field device or None for the gateway itself, the RPC's id)


class ThingsBoardChannel:
    name = "thingsboard"

    def __init__(self, name_of: Callable[[str], str] = str) -> None:
        self.name_of = name_of  # a field device's ThingsBoard name ([uplink] field_device_name)
        self._field_ids: dict[str, str] = {}  # ThingsBoard name -> field device id, as seen
        self._req = 0
        self._request: str | None = None  # id of the attributes request waiting for its answer
        self._request_sent = 0.0
        self._stale_answer = False  # an update came while the request was out
        self._delivered: bytes | None = None
        self._reported: dict[str, Any] = {}  # attributes as last reported in this session
        self._next_report = 0.0
        self._connected: set[str] = set()  # field devices announced with v1/gateway/connect
        self._too_big: set[str] = set()  # attributes over ATTRIBUTES_MAX_BYTES, warned of
        self._rpcs: dict[str, _Rpc] = {}  # our command id -> what it answers
        self._refuse: list[tuple[_Rpc, str]] = []  # unreadable RPCs, answered at the next tick

    def events_topic(self, events: str, subfolder: str) -> str:
        # One telemetry topic: config refuses a route subfolder under this profile
        # (profiles.check_routes), so one never reaches here.
        return events

    def subscriptions(self) -> list[str]:
        return [ATTRIBUTES, ATTR_RESPONSE + "+", RPC_REQUEST + "+", GATEWAY_RPC]

    def connected(self, client: mqtt.Client) -> None:
        self._reported = {}
        self._next_report = 0.0
        self._connected = set()
        self._send_request(client, time.monotonic())

    def _send_request(self, client: mqtt.Client, now: float) -> None:
        self._req += 1
        body = json.dumps({"sharedKeys": CONFIG_KEY})
        if client.publish(f"{ME}attributes/request/{self._req}", body, qos=1).rc == 0:
            self._request, self._request_sent, self._stale_answer = str(self._req), now, False

    def tick(self, client: mqtt.Client, now: float) -> None:
        if self._request is not None and now - self._request_sent > REQUEST_TIMEOUT_S:
            log.warning("tb_attributes_unanswered timeout_s=%g; asking again", REQUEST_TIMEOUT_S)
            self._send_request(client, now)
        while self._refuse:
            rpc, reason = self._refuse.pop(0)
            self._respond(client, rpc, {"status": "refused", "reason": reason})

    # -- from ThingsBoard --------------------------------------------------------------------

    def incoming(self, topic: str, payload: bytes) -> Incoming:
        if topic == ATTRIBUTES:
            return self._attributes(payload, answer=False)
        if topic.startswith(ATTR_RESPONSE):
            if topic[len(ATTR_RESPONSE) :] != self._request:
                return None  # an answer to an earlier request
            self._request = None
            if self._stale_answer:
                return None
            return self._attributes(payload, answer=True)
        if topic.startswith(RPC_REQUEST):
            return self._rpc((None, topic[len(RPC_REQUEST) :]), payload, None)
        if topic == GATEWAY_RPC:
            try:
                doc = json.loads(payload)
                device, data = str(doc["device"]), doc["data"]
                rpc: _Rpc = (device, data["id"])
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                log.warning("tb_gateway_rpc_unreadable error=%s", exc)
                return None  # no device or id: nothing to answer
            field = self._field_ids.get(device, device)
            return self._rpc(rpc, json.dumps(data).encode(), field)
        log.debug("tb_unexpected_message topic=%s", topic)
        return None

    def _attributes(self, payload: bytes, answer: bool) -> Incoming:
        try:
            doc = json.loads(payload)
            if answer:
                doc = doc.get("shared", {})
            if not isinstance(doc, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            log.warning("tb_attributes_unreadable error=%s", exc)
            return None
        if not answer:
            if CONFIG_KEY not in doc:
                return None  # another shared attribute changed (or one was deleted)
            self._stale_answer = self._request is not None
        value = doc.get(CONFIG_KEY)
        if value is None:
            return None
        if isinstance(value, str):  # a signed document (JWS), or JSON text typed in as a string
            data = value.encode()
        else:
            data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        if data == self._delivered:
            log.debug("tb_config_unchanged")
            return None
        self._delivered = data
        return ConfigPush(data)

    def _rpc(self, rpc: _Rpc, payload: bytes, device: str | None) -> Incoming:
        try:
            doc = parse_command(payload)
            if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
                raise ValueError("an RPC is a JSON object with a method")
            method, params = doc["method"], doc.get("params")
            if isinstance(params, str) and params.lstrip().startswith("{"):
                params = parse_command(params.encode())  # dashboard widgets send JSON as text
            if method == "write":
                if not isinstance(params, dict):
                    raise ValueError('"write" takes params {"point": ..., "value": ...}')
                point = params.get("point")
                if device is not None and isinstance(point, str) and "/" not in point:
                    point = f"{device}/{point}"
                body: dict[str, Any] = {"point": point, "value": params.get("value")}
            else:
                body = {**(params if isinstance(params, dict) else {}), "command": method}
        except (ValueError, RecursionError) as exc:
            self._refuse.append((rpc, f"malformed command: {exc}"))
            return None
        token = f"rpc:{rpc[0] or ''}:{rpc[1]}"
        if len(self._rpcs) >= MAX_PENDING_RPCS:
            self._rpcs.pop(next(iter(self._rpcs)))
        self._rpcs[token] = rpc
        body["id"] = token
        return CommandIn(json.dumps(body, allow_nan=False).encode())

    # -- to ThingsBoard ----------------------------------------------------------------------

    def report_state(self, client: mqtt.Client, payload: bytes) -> bool:
        try:
            state = json.loads(payload)
        except ValueError:
            return True  # not ours to judge: the session makes strict JSON
        if not isinstance(state, dict):
            return True
        self._follow_devices(client, state.get("devices"))
        now = time.monotonic()
        if now < self._next_report:
            return False  # offered again, newest first, at the next state interval
        changed = {k: v for k, v in state.items() if self._reported.get(k, _UNSET) != v}
        if not changed:
            return True
        for part in self._parts(changed):
            body = json.dumps(part, separators=(",", ":"), allow_nan=False)
            if client.publish(ATTRIBUTES, body, qos=1).rc != 0:
                return False
            self._reported.update(part)
        self._next_report = now + REPORT_MIN_INTERVAL_S
        return True

    def _parts(self, changed: dict[str, Any]) -> list[dict[str, Any]]:
        """The changed attributes in messages under ATTRIBUTES_MAX_BYTES; one alone over it is
        left out (logged once at WARNING), so the rest still arrive."""
        parts: list[dict[str, Any]] = [{}]
        size = 2
        for key, value in changed.items():
            n = len(json.dumps({key: value}, separators=(",", ":"))) + 1
            if n > ATTRIBUTES_MAX_BYTES:
                if key not in self._too_big:
                    self._too_big.add(key)
                    log.warning(
                        "tb_attribute_too_big key=%s bytes=%d limit=%d",
                        key,
                        n,
                        ATTRIBUTES_MAX_BYTES,
                    )
                continue
            if size + n > ATTRIBUTES_MAX_BYTES:
                parts.append({})
                size = 2
            parts[-1][key] = value
            size += n
        return [p for p in parts if p]

    def _follow_devices(self, client: mqtt.Client, devices: Any) -> None:
        """v1/gateway/connect and disconnect as the state document's `devices` changed."""
        if not isinstance(devices, dict):
            return
        for d in devices:
            self._field_ids.setdefault(self.name_of(d), d)
        up = {
            self.name_of(d)
            for d, doc in devices.items()
            if isinstance(doc, dict) and doc.get("status") == "up"
        }
        for dev in sorted(up - self._connected):
            if client.publish(CONNECT, json.dumps({"device": dev}), qos=1).rc == 0:
                self._connected.add(dev)
                log.info("tb_device_connect device=%s", dev)
        for dev in sorted(self._connected - up):
            if client.publish(DISCONNECT, json.dumps({"device": dev}), qos=1).rc == 0:
                self._connected.discard(dev)
                log.info("tb_device_disconnect device=%s", dev)

    def report_outcome(self, client: mqtt.Client, outcome: dict[str, Any]) -> None:
        self._next_report = 0.0  # an outcome is news: the next state report goes at once

    def answer(self, client: mqtt.Client, result: dict[str, Any]) -> bool:
        rpc = self._rpcs.pop(str(result.get("id")), None)
        if rpc is None:
            log.debug("rpc_result_unmatched id=%r", result.get("id"))
            return False
        return self._respond(client, rpc, result)

    def _respond(self, client: mqtt.Client, rpc: _Rpc, result: dict[str, Any]) -> bool:
        device, rid = rpc
        body = {**result, "id": rid}
        if device is None:
            topic, doc = f"{ME}rpc/response/{rid}", body
        else:
            topic, doc = GATEWAY_RPC, {"device": device, "id": rid, "data": body}
        return client.publish(topic, json.dumps(doc, allow_nan=False), qos=1).rc == 0


_UNSET = object()
