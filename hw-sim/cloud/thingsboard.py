"""ThingsBoard stand-in: access tokens, the device MQTT API and the gateway MQTT API.

Invariants, as ThingsBoard documents its MQTT transport:
- MQTT 3.1.1 and 5 (the tb-mqtt-client SDK speaks only 5). The username is a device's access
  token; an unknown or missing token gets CONNACK "not authorized". The observer (admin)
  connects with its password.
- Every `v1/devices/me/...` topic means the connected device: nothing a device publishes is
  routed to another session, and every answer goes to the asking session only.
- Device API: telemetry (`{k: v}`, `{"ts": ms, "values": {...}}` or a list of either) and client
  attributes are stored; `attributes/request/{id}` with `clientKeys`/`sharedKeys` (comma
  separated; none = all) is answered on `attributes/response/{id}` with `client`/`shared`;
  shared-attribute updates are pushed on `v1/devices/me/attributes`; a server-side RPC goes out on
  `rpc/request/{id}` and its answer comes back on `rpc/response/{id}`; a client-side RPC
  `getSessionLimits` (the SDK asks it at every connect) is answered with `session_limits`.
- Gateway API (gateway devices only): `v1/gateway/connect|disconnect` with `{"device": name}`,
  telemetry `{"Device": [{"ts": ms, "values": {...}}]}` and attributes `{"Device": {...}}`;
  `v1/gateway/attributes/request` with `id`, `device`, `client` (true/false) and `key` or `keys`,
  answered on `v1/gateway/attributes/response` with `value` or `values` (what is not found is
  left out, as is an empty scope of a device's answer); shared-attribute updates of a device
  behind the gateway are pushed as `{"device", "data"}` on `v1/gateway/attributes`; RPC as
  `{"device", "data": {"id", "method", "params"}}` on `v1/gateway/rpc`, answered there with
  `{"device", "id", "data"}`. A device the gateway names is created on first use, as
  ThingsBoard does.
- A message over `maxPayloadSize` (64 KB, as ThingsBoard's default NETTY_MAX_PAYLOAD_SIZE)
  closes the connection unanswered; counted in `oversize`.
- Every telemetry entry's `values` (device or gateway API) is fed to the recorder, so records
  are counted by their `id`; values with an `_id` map (gatewayd's encoder,
  gatewayd/uplink/payload_thingsboard.py) are fed as one record per key, `{"id", "point":
  "device/key", "ts", "value"}`; a payload that is not JSON counts as malformed, and nothing
  else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import auth
from .broker import Broker, Session
from .mqtt_wire import ProtocolError
from .recorder import Recorder

log = logging.getLogger("gatewayd_sim.cloud.thingsboard")

Json = dict[str, Any]
ME = "v1/devices/me/"
GW = "v1/gateway/"
ADMIN = "$sim/"  # observer only: `$sim/attributes/{device}`, `$sim/rpc/{device}`

DEFAULT_LIMITS: Json = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}


@dataclass
class Device:
    name: str
    token: str | None = None  # None: created through a gateway, no credentials of its own
    gateway: bool = False
    via: str | None = None  # the gateway it is connected through
    shared: Json = field(default_factory=dict)
    client: Json = field(default_factory=dict)
    telemetry: list[tuple[int, Json]] = field(default_factory=list)  # (ts ms, values)


class ThingsBoard(Broker):
    mqtt5 = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: Recorder | None = None,
        observer_password: str | None = None,
    ) -> None:
        super().__init__(None, host, port, recorder, observer_password)
        self.devices: dict[str, Device] = {}
        self.session_limits: Json = dict(DEFAULT_LIMITS)
        self.rpc_replies: dict[tuple[str, int], Any] = {}  # (device, request id) -> answer
        self.client_rpcs: list[tuple[str, Json]] = []  # (device, request) other than the SDK's
        self.events: list[tuple[str, str, str]] = []  # (gateway, "connect"|"disconnect", device)
        self.oversize = 0  # messages over maxPayloadSize (connection closed)
        self.largest = 0  # bytes of the largest message a device sent
        self._rpc_id = 0

    # -- devices ---------------------------------------------------------------------------------

    def add_device(self, name: str, token: str, gateway: bool = False) -> Device:
        dev = self.devices.setdefault(name, Device(name))
        dev.token, dev.gateway = token, gateway
        return dev

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        writer: asyncio.StreamWriter,
    ) -> auth.Outcome:
        def device_of_token() -> tuple[str | None, str]:
            dev = next((d for d in self.devices.values() if username and d.token == username), None)
            return (None, "unknown access token") if dev is None else (dev.name, "ok")

        return auth.authenticate(self, username, password, device_of_token)

    def allowed(self, s: Session, topic: str) -> bool:
        if s.device is None:
            return True
        return topic.startswith(ME) or (topic.startswith(GW) and self.devices[s.device].gateway)

    def admit(self, s: Session, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        # ThingsBoard's transport closes the connection on a message over its payload limit.
        if s.device is not None and len(payload) > int(self.session_limits["maxPayloadSize"]):
            self.oversize += 1
            raise ProtocolError(f"message of {len(payload)} bytes from {s.client_id}")
        self.largest = max(self.largest, len(payload))
        return super().admit(s, topic, payload, qos, retain)

    def forward(self, s: Session, topic: str) -> bool:
        return False  # every topic here is "me" or the gateway's own

    def _session_of(self, name: str) -> Session | None:
        return next((s for s in self.sessions.values() if s.device == name), None)

    def _device(self, name: str, via: str | None = None) -> Device:
        dev = self.devices.setdefault(name, Device(name))
        if via is not None:
            dev.via = via
        return dev

    # -- what a device or gateway publishes ------------------------------------------------------

    def consume(self, s: Session, topic: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload) if payload else {}
        except ValueError:
            self.recorder.malformed += 1
            log.info("not_json client=%s topic=%s", s.client_id, topic)
            return
        if s.device is None:
            if topic.startswith(ADMIN + "attributes/"):
                self.set_shared(topic[len(ADMIN + "attributes/") :], doc)
            elif topic.startswith(ADMIN + "rpc/"):
                self.send_rpc(topic[len(ADMIN + "rpc/") :], doc["method"], doc.get("params"))
            return
        try:
            if topic.startswith(ME):
                self._device_api(s, self.devices[s.device], topic[len(ME) :], doc)
            else:
                self._gateway_api(s, topic[len(GW) :], doc)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # ThingsBoard logs and drops a message it cannot process; so does the stand-in.
            log.info("unprocessable client=%s topic=%s error=%r", s.client_id, topic, exc)
            self.recorder.malformed += 1

    def _telemetry(self, dev: Device, doc: Any) -> None:
        entries = doc if isinstance(doc, list) else [doc]
        now = int(time.time() * 1000)
        values_list: list[Json] = []
        for e in entries:
            if not isinstance(e, dict):
                raise TypeError("a telemetry entry must be an object")
            ts, values = (int(e["ts"]), e["values"]) if "values" in e else (now, e)
            if not isinstance(values, dict):
                raise TypeError("telemetry values must be an object")
            dev.telemetry.append((ts, values))
            ids = values.get("_id")
            if isinstance(ids, dict):  # gatewayd's encoder: one record per key, its id in _id
                values_list.extend(
                    {"id": rid, "point": f"{dev.name}/{key}", "ts": ts, "value": values.get(key)}
                    for key, rid in ids.items()
                )
            else:
                values_list.append(values)
        self.recorder.feed_items(values_list)

    def _device_api(self, s: Session, dev: Device, rest: str, doc: Any) -> None:
        if rest == "telemetry":
            self._telemetry(dev, doc)
        elif rest == "attributes":
            dev.client.update(doc)
        elif rest.startswith("attributes/request/"):
            req_id = rest.rsplit("/", 1)[1]
            client_keys = _keys(doc.get("clientKeys"))
            shared_keys = _keys(doc.get("sharedKeys"))
            everything = client_keys is None and shared_keys is None
            answer: Json = {}
            for scope, keys, have in (
                ("client", client_keys, dev.client),
                ("shared", shared_keys, dev.shared),
            ):
                found = dict(have) if everything else {k: have[k] for k in keys or () if k in have}
                if found:  # ThingsBoard leaves out a scope with nothing found
                    answer[scope] = found
            self.deliver_to(s, f"{ME}attributes/response/{req_id}", json.dumps(answer).encode())
        elif rest.startswith("rpc/response/"):
            self._rpc_reply(dev.name, int(rest.rsplit("/", 1)[1]), doc)
        elif rest.startswith("rpc/request/"):
            req_id = rest.rsplit("/", 1)[1]
            if doc.get("method") == "getSessionLimits":
                limits = dict(self.session_limits)
                if dev.gateway:
                    limits.setdefault("gatewayRateLimits", limits["rateLimits"])
                body = json.dumps(limits).encode()
                self.deliver_to(s, f"{ME}rpc/response/{req_id}", body)
            else:
                self.client_rpcs.append((dev.name, doc))

    def _gateway_api(self, s: Session, rest: str, doc: Any) -> None:
        gw = s.device
        assert gw is not None
        if rest in ("connect", "disconnect"):
            name = str(doc["device"])
            dev = self._device(name, via=gw if rest == "connect" else None)
            if rest == "disconnect" and dev.via == gw:
                dev.via = None
            self.events.append((gw, rest, name))
        elif rest == "telemetry":
            for name, entries in doc.items():
                self._telemetry(self._device(name, via=gw), entries)
        elif rest == "attributes":
            for name, attrs in doc.items():
                self._device(name, via=gw).client.update(attrs)
        elif rest == "attributes/request":
            dev = self._device(str(doc["device"]), via=gw)
            if not isinstance(doc["client"], bool):
                raise TypeError("'client' must be true or false")
            source = dev.client if doc["client"] else dev.shared
            answer: Json = {"id": int(doc["id"]), "device": dev.name}
            # As ThingsBoard 3.x answers: `key` gets `value`, `keys` gets `values`, and an
            # attribute not found is left out (no `value`, or not in `values`). Older versions
            # answered `value` whenever one attribute was found, even for `keys`.
            if "key" in doc:
                if doc["key"] in source:
                    answer["value"] = source[doc["key"]]
            else:
                found = {k: source[k] for k in doc["keys"] if k in source}
                if found:
                    answer["values"] = found
            self.deliver_to(s, f"{GW}attributes/response", json.dumps(answer).encode())
        elif rest == "rpc":
            self._rpc_reply(str(doc["device"]), int(doc["id"]), doc.get("data"))
        elif rest != "claim":
            # ThingsBoard acknowledges a publish to an unknown topic and drops it.
            log.info("unknown_gateway_topic client=%s topic=v1/gateway/%s", s.client_id, rest)

    def _rpc_reply(self, device: str, rid: int, answer: Any) -> None:
        self.rpc_replies[(device, rid)] = answer
        log.info("rpc_reply device=%s id=%d answer=%s", device, rid, json.dumps(answer))

    # -- the cloud side --------------------------------------------------------------------------

    def set_shared(self, name: str, attrs: Json) -> bool:
        """Update shared attributes and push them; False when no session could be told."""
        dev = self._device(name)
        dev.shared.update(attrs)
        direct = self._session_of(name)
        if direct is not None:
            return self.deliver_to(direct, f"{ME}attributes", json.dumps(attrs).encode())
        gw = self._session_of(dev.via) if dev.via else None
        if gw is not None:
            body = json.dumps({"device": name, "data": attrs}).encode()
            return self.deliver_to(gw, f"{GW}attributes", body)
        return False

    def send_rpc(self, name: str, method: str, params: Any) -> int:
        """A server-side RPC to a device, directly or through its gateway: the request id."""
        self._rpc_id += 1
        rid = self._rpc_id
        dev = self._device(name)
        direct = self._session_of(name)
        if direct is not None:
            body = json.dumps({"method": method, "params": params}).encode()
            self.deliver_to(direct, f"{ME}rpc/request/{rid}", body)
        elif dev.via and (gw := self._session_of(dev.via)) is not None:
            data = {"id": rid, "method": method, "params": params}
            self.deliver_to(gw, f"{GW}rpc", json.dumps({"device": name, "data": data}).encode())
        else:
            log.info("rpc_undeliverable device=%s method=%s", name, method)
        return rid


def _keys(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(k) for k in value]
    return [k.strip() for k in str(value).split(",") if k.strip()]
