"""An Azure IoT Hub stand-in on the embedded broker: SAS auth, device twins, direct methods.

What it checks, as IoT Hub does over MQTT 3.1.1 (TLS when given a context):
- CONNECT: client id = a registered device id; username `{hub}.azure-devices.net/{device}/?...`
  (any api-version and extra parameters); password a SAS token `SharedAccessSignature
  sr=..&sig=..&se=..` whose sr is the URL-encoded `{hub host}/devices/{device}`, whose sig is
  HMAC-SHA256 over `{sr}\\n{se}` with the device's primary or secondary key, and whose se is
  in the future; the connection is closed when se passes (the base broker's expiry timer);
  or, for a device added with `x509=True` and no password, a TLS client certificate signed by
  `client_ca` (CA-signed X.509 authentication) whose common name is the device id;
- a device publishes only telemetry (`devices/{id}/messages/events/{properties}`, at most
  MAX_MESSAGE_BYTES, else the connection is closed as IoT Hub does), twin requests
  (`$iothub/twin/GET/?$rid=`, `$iothub/twin/PATCH/properties/reported/?$rid=`) and method
  answers (`$iothub/methods/res/{status}/?$rid=`); anything else closes the connection;
  retained flags are ignored (IoT Hub keeps no retained messages);
- twins carry `$version`s: desired changes (`update_desired`, a JSON merge patch) bump it and
  are pushed to a subscribed device with it (refused, ValueError, over 32 KB or with a bad
  key); reported PATCHes are merged, refused with 400 when over REPORTED_MAX_BYTES (32 KB, as
  desired) or when a key holds '.', '$' or ' ';
- `throttle_next = n` answers the next n twin requests with 429; `twin_requests` logs every
  one (monotonic time, device, op, status) so a test can see the back-off;
- `invoke` calls a direct method and waits for its answer: (status, payload); 404 when the
  device is not connected, 504 when it does not answer within the timeout.

Admin (CLI) over MQTT as the observer: publish a patch to `$admin/{device}/desired`, a method
payload to `$admin/{device}/methods/{name}` (the answer comes on `$admin/{device}/methods/res`
as `{"status", "payload"}`), anything to `$admin/{device}/twin/get` (the twin comes on
`$admin/{device}/twin`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import struct
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .broker import ACCEPTED, BAD_CLIENT_ID, BAD_CREDENTIALS, NOT_AUTHORIZED, Broker, Session
from .mqtt_wire import PUBACK, Cursor, ProtocolError, packet, topic_matches
from .recorder import Recorder

log = logging.getLogger("gatewayd_sim.azure")

API_VERSION = "2021-04-12"
MAX_MESSAGE_BYTES = 256 * 1024
REPORTED_MAX_BYTES = 32 * 1024
DEVICE_SUBSCRIPTIONS = (
    "$iothub/twin/res/#",
    "$iothub/twin/PATCH/properties/desired/#",
    "$iothub/methods/POST/#",
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as twins apply a PATCH: objects merge, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _bad_key(doc: Any) -> str | None:
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if any(c in k for c in ".$ "):
                    return str(k)
                stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return None


@dataclass
class TwinDevice:
    id: str
    keys: list[bytes]
    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported: dict[str, Any] = field(default_factory=dict)
    reported_version: int = 1
    x509: bool = False


@dataclass(frozen=True)
class TwinRequest:
    at: float  # monotonic
    device: str
    op: str  # "get" or "reported"
    status: int


class AzureHub(Broker):
    def __init__(
        self,
        hub: str = "demo-hub",
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
        recorder: Recorder | None = None,
        admin_password: str | None = None,
        client_ca: str | None = None,
    ) -> None:
        """`client_ca`: a CA file; device certificates it signed authenticate (X.509)."""
        super().__init__(None, host, port, recorder, observer_password=admin_password)
        if tls is not None and client_ca is not None:
            tls.verify_mode = ssl.CERT_OPTIONAL  # SAS devices present no certificate
            tls.load_verify_locations(cafile=client_ca)
        self.hub = hub
        self.hub_host = f"{hub}.azure-devices.net"
        self.tls = tls
        self.devices: dict[str, TwinDevice] = {}
        self.throttle_next = 0
        self.twin_requests: list[TwinRequest] = []
        self.content_types: Counter[str] = Counter()
        self.oversize = 0  # telemetry messages over MAX_MESSAGE_BYTES (connection closed)
        self.largest = 0  # bytes of the largest telemetry message
        self.sas_expiries: list[float] = []  # se of every accepted token
        self._calls: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self._next_rid = 0

    async def start(self) -> AzureHub:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def add_device(self, device_id: str, key: str | None = None, x509: bool = False) -> str:
        """Register a device with a primary key (base64; a new random one by default), or for
        X.509 (CA-signed: its certificate's common name is the id; returns "")."""
        dev = self.devices.get(device_id) or TwinDevice(device_id, [])
        self.devices[device_id] = dev
        if x509:
            dev.x509 = True
            return ""
        key = key or base64.b64encode(secrets.token_bytes(32)).decode()
        dev.keys.append(base64.b64decode(key))
        return key

    # -- the cloud's side ----------------------------------------------------------------------

    def twin(self, device: str) -> dict[str, Any]:
        d = self.devices[device]
        return {
            "desired": {**d.desired, "$version": d.desired_version},
            "reported": {**d.reported, "$version": d.reported_version},
        }

    def update_desired(self, device: str, patch: dict[str, Any]) -> int:
        """Merge a desired-properties patch and push it to the device; the new $version."""
        d = self.devices[device]
        merged = merge_patch(d.desired, patch)
        if len(json.dumps(merged).encode()) > REPORTED_MAX_BYTES:
            raise ValueError("desired properties over 32 KB (IoT Hub refuses the update)")
        if (key := _bad_key(merged)) is not None:
            raise ValueError(f"desired key {key!r} holds '.', '$' or ' ' (IoT Hub refuses it)")
        d.desired = merged
        d.desired_version += 1
        body = json.dumps({**patch, "$version": d.desired_version}).encode()
        topic = f"$iothub/twin/PATCH/properties/desired/?$version={d.desired_version}"
        s = self.sessions.get(device)
        if s is not None:
            self._to_device(s, topic, body)
        return d.desired_version

    async def invoke(
        self, device: str, name: str, payload: Any = None, timeout_s: float = 30.0
    ) -> tuple[int, Any]:
        """A direct method: (status, payload) of the device's answer; 404 offline, 504 late."""
        s = self.sessions.get(device)
        if s is None or not any(
            topic_matches(p, f"$iothub/methods/POST/{name}/?$rid=1") for p in s.subscriptions
        ):
            return 404, {"message": f"device {device} is not online"}
        self._next_rid += 1
        rid = format(self._next_rid, "x")
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._calls[rid] = fut
        body = json.dumps(payload).encode() if payload is not None else b"null"
        self._to_device(s, f"$iothub/methods/POST/{name}/?$rid={rid}", body)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return 504, {"message": f"no answer within {timeout_s:g} s"}
        finally:
            self._calls.pop(rid, None)

    def _to_device(self, s: Session, topic: str, payload: bytes) -> None:
        for pattern, qos in s.subscriptions.items():
            if topic_matches(pattern, topic):
                self._deliver(s, topic, payload, qos, retain=False)
                return

    # -- the device's side ---------------------------------------------------------------------

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | None,
        writer: asyncio.StreamWriter,
    ) -> tuple[int, str, str | None, float, dict[str, Any], str | None]:
        if username == "observer" and self.observer_password is not None:
            return super().authenticate(client_id, username, password, writer)
        cert = writer.get_extra_info("peercert") or {}
        names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        peer_cn = names[0] if names else None
        dev = self.devices.get(client_id)
        if dev is None:
            return BAD_CLIENT_ID, f"no device {client_id!r} in hub {self.hub}", None, 0.0, {}, None
        if username is None or not username.startswith(f"{self.hub_host}/{client_id}/?"):
            why = f"username {username!r} is not {self.hub_host}/{client_id}/?api-version=..."
            return BAD_CREDENTIALS, why, None, 0.0, {}, None
        if password is None or dev.x509:
            if dev.x509 and password is None and peer_cn == client_id:
                return ACCEPTED, "x509", client_id, 0.0, {}, None
            why = f"no SAS token, and no client certificate for {client_id!r} (CN {peer_cn!r})"
            return NOT_AUTHORIZED, why, None, 0.0, {}, None
        ok, why, se = self._check_sas(dev, password.decode(errors="replace"))
        if not ok:
            return NOT_AUTHORIZED, why, None, 0.0, {}, None
        self.sas_expiries.append(se)
        return ACCEPTED, "ok", client_id, se, {"se": se}, None

    def _check_sas(self, dev: TwinDevice, token: str) -> tuple[bool, str, float]:
        prefix = "SharedAccessSignature "
        if not token.startswith(prefix):
            return False, "password is not a SharedAccessSignature", 0.0
        fields = dict(p.partition("=")[::2] for p in token[len(prefix) :].split("&"))
        try:
            sr, sig, se = fields["sr"], urllib.parse.unquote(fields["sig"]), int(fields["se"])
        except (KeyError, ValueError):
            return False, "SAS token lacks sr, sig or se", 0.0
        resource = urllib.parse.unquote(sr)
        if resource.lower() != f"{self.hub_host}/devices/{dev.id}".lower():
            return False, f"sr {resource!r} is not this device's resource", 0.0
        signed = f"{urllib.parse.quote(resource, safe='')}\n{se}".encode()
        try:
            given = base64.b64decode(sig)
        except ValueError:
            return False, "sig is not base64", 0.0
        if not any(
            hmac.compare_digest(hmac.new(k, signed, hashlib.sha256).digest(), given)
            for k in dev.keys
        ):
            return False, "signature does not match the device's keys", 0.0
        if se <= time.time():
            return False, f"token expired at {se}", 0.0
        return True, "ok", float(se)

    def _allowed(self, s: Session, topic: str) -> bool:
        if s.device is None:  # the observer (admin)
            return True
        if topic.startswith(f"devices/{s.device}/messages/"):
            return True
        return any(topic.startswith(p.rstrip("#")) for p in DEVICE_SUBSCRIPTIONS) or any(
            topic.startswith(p)
            for p in (
                "$iothub/twin/GET/",
                "$iothub/twin/PATCH/properties/reported/",
                "$iothub/methods/res/",
            )
        )

    def _on_publish(self, s: Session, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        c = Cursor(body)
        topic = c.text()
        pid = c.u16() if qos else 0
        payload = c.rest()
        if qos > 1:
            raise ProtocolError("IoT Hub does not support QoS 2")
        if not self._allowed(s, topic):
            raise ProtocolError(f"{s.client_id} may not publish to {topic}")
        if s.device is None and topic.startswith("$admin/"):
            self._admin(topic, payload)
        elif topic.startswith("$iothub/twin/"):
            self._twin_request(s, topic, payload)
        elif topic.startswith("$iothub/methods/res/"):
            status, _, query = topic[len("$iothub/methods/res/") :].partition("/?")
            rid = dict(p.partition("=")[::2] for p in query.split("&")).get("$rid", "")
            fut = self._calls.get(rid)
            if fut is not None and not fut.done():
                try:
                    answer = json.loads(payload) if payload else None
                except ValueError:
                    answer = payload.decode(errors="replace")
                fut.set_result((int(status), answer))
        else:
            if len(payload) > MAX_MESSAGE_BYTES:
                self.oversize += 1
                raise ProtocolError(f"message of {len(payload)} bytes from {s.client_id}")
            self.largest = max(self.largest, len(payload))
            bag = topic.split("/messages/events/", 1)[-1]
            props = urllib.parse.parse_qs(bag)
            self.content_types[props.get("$.ct", [""])[0]] += 1
            self.recorder.feed(payload)
            if self.on_message is not None:
                self.on_message(topic, payload)
        if qos and self.acks_enabled:
            ack = packet(PUBACK, 0, struct.pack(">H", pid))
            if self.ack_delay_s:
                asyncio.get_running_loop().call_later(self.ack_delay_s, s.send, ack)
            else:
                s.send(ack)

    def _twin_request(self, s: Session, topic: str, payload: bytes) -> None:
        path, _, query = topic.partition("?")
        rid = dict(p.partition("=")[::2] for p in query.split("&")).get("$rid", "")
        assert s.device is not None
        dev = self.devices[s.device]
        op = "get" if path.startswith("$iothub/twin/GET") else "reported"
        extra = ""
        if self.throttle_next > 0:
            self.throttle_next -= 1
            status, body = 429, b'{"message":"throttled"}'
        elif op == "get":
            status, body = 200, json.dumps(self.twin(dev.id)).encode()
        else:
            status, body = self._reported(dev, payload)
            if status == 204:
                extra = f"&$version={dev.reported_version}"
        self.twin_requests.append(TwinRequest(time.monotonic(), dev.id, op, status))
        self._to_device(s, f"$iothub/twin/res/{status}/?$rid={rid}{extra}", body)

    def _reported(self, dev: TwinDevice, payload: bytes) -> tuple[int, bytes]:
        if len(payload) > REPORTED_MAX_BYTES:
            return 400, b'{"message":"reported properties over 32 KB"}'
        try:
            patch = json.loads(payload)
        except ValueError:
            return 400, b'{"message":"not JSON"}'
        if not isinstance(patch, dict):
            return 400, b'{"message":"not a JSON object"}'
        if (key := _bad_key(patch)) is not None:
            return 400, json.dumps({"message": f"key {key!r} holds '.', '$' or ' '"}).encode()
        dev.reported = merge_patch(dev.reported, patch)
        dev.reported_version += 1
        return 204, b""

    def _admin(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")  # $admin/{device}/...
        if len(parts) < 3 or parts[1] not in self.devices:
            return
        device, what = parts[1], parts[2]
        if what == "desired":
            self.update_desired(device, json.loads(payload))
        elif what == "twin":
            self.publish(f"$admin/{device}/twin", json.dumps(self.twin(device)).encode())
        elif what == "methods" and len(parts) == 4:
            arg = json.loads(payload) if payload else None

            async def call() -> None:
                status, answer = await self.invoke(device, parts[3], arg)
                doc = {"status": status, "payload": answer}
                self.publish(f"$admin/{device}/methods/res", json.dumps(doc).encode())

            task = asyncio.get_running_loop().create_task(call())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def server_tls(
    folder: Any, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ()
) -> tuple[ssl.SSLContext, str]:
    """The stand-in's server context, its certificate from the one test CA (certs.py), for
    `names`, 127.0.0.1 and `ips`: (server context, CA file path)."""
    from pathlib import Path

    from .certs import CertificateAuthority

    ca = CertificateAuthority(Path(folder), cn="IoT Hub stand-in CA")
    cert_file, key_file = ca.issue("hub", server=True, dns_names=names, ips=("127.0.0.1", *ips))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, str(ca.ca_file)
