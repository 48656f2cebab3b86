"""Azure IoT Hub's channel: configuration from the device twin, commands as direct methods.

IoT Hub keeps no retained messages; what the gateway must hear lives in the device twin:

- the configuration is the desired property `gatewayd` (DESIRED_KEY): the whole document, as
  an object in the form of the TOML file (with its `version`), or a string holding a compact
  JWS when [remote_config] require_signed. At every connect the channel GETs the twin
  (`$iothub/twin/GET/?$rid=N`, answered on `$iothub/twin/res/{status}/?$rid=N`) and hands the
  document on; then every desired-property PATCH (`$iothub/twin/PATCH/properties/desired/
  ?$version=V`) is merged onto the last document as a JSON merge patch (RFC 7386: objects
  merge, `null` deletes, arrays and scalars replace) and the merged whole is handed on. A PATCH
  whose `$version` skips one, or one that comes before the GET's answer and is newer than it,
  makes the channel GET the twin again rather than merge onto a stale base;
  IoT Hub limits the desired properties to 32 KB in all, keys without '.', '$' or ' ', objects
  10 deep: a configuration document must fit (one of a few devices does; a larger fleet of
  points needs another way in, such as a smaller document per gateway);
- the state document (with the config outcomes in `config` and `config_recent`) goes to the
  reported property `gatewayd` (`$iothub/twin/PATCH/properties/reported/?$rid=N`);
- telemetry goes to `devices/{id}/messages/events/{property bag}`, and IoT Hub reads all that
  follows `events/` as the bag: a routed subfolder is the message property `subfolder`
  (URL-encoded, added to the configured bag), never a topic level after it;
- a direct method (`$iothub/methods/POST/{name}/?$rid=N`) is a command: `write` with
  `{"point": "dev/p", "value": v}`, `ping`, any other name is refused by commands.py as
  unknown. The result answers on `$iothub/methods/res/{status}/?$rid=N` with the result as
  body (its `id` the caller's, else the rid) and a status: 200 ok, 400 refused, 500 failed,
  504 unknown (e.g. a write that timed out: it may have been applied).

Invariants:
- the document handed on is serialised canonically (sorted keys), and the same document is not
  handed on twice in a row: a twin GET at a reconnect that finds nothing new is no push (and
  ConfigManager ignores a redelivery that reaches it across an uplink restart);
- a 429 answer to a twin request pauses every twin request of this channel (Throttle: 1 s
  doubling to 60 s); the throttled request is sent again after the pause, never at once, and
  one request at a time until one succeeds (the GET first, then the newest state);
  telemetry is not paused (it has its own PUBACK window);
- reported PATCHes go at most once per REPORTED_MIN_INTERVAL_S; the newest state waits;
- a reported document over REPORTED_MAX_BYTES (IoT Hub's 32 KB reported-properties limit) is
  not sent: logged once at WARNING; a request left unanswered for REQUEST_TIMEOUT_S is sent
  again (GET) or forgotten (reported: the next state document supersedes it).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from gatewayd.remote_config.commands import parse_command

from .base import CommandIn, ConfigPush, Incoming, Throttle

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")

DESIRED_KEY = "gatewayd"  # the desired property with the config, the reported one with the state
REPORTED_MAX_BYTES = 32 * 1024
REQUEST_TIMEOUT_S = 10.0
# Twin operations are a hub-wide quota (S1: 10/s per unit): the state, which changes with its
# counters every second, goes at most this often (the newest waits; outcomes wait with it).
REPORTED_MIN_INTERVAL_S = 5.0
METHOD_STATUS = {"ok": 200, "refused": 400, "failed": 500, "unknown": 504}
MAX_PENDING_METHODS = 256

TWIN_RES = "$iothub/twin/res/"
TWIN_DESIRED = "$iothub/twin/PATCH/properties/desired/"
METHODS = "$iothub/methods/POST/"


def _split(topic: str, prefix: str) -> tuple[str, dict[str, str]]:
    """`prefix{path}/?a=1&b=2` -> (path, {"a": "1", "b": "2"})."""
    path, _, query = topic[len(prefix) :].partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    return path.rstrip("/"), params


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class AzureChannel:
    name = "azure"

    def __init__(self) -> None:
        self.throttle = Throttle()
        self._rid = 0
        self._get_rid: str | None = None  # the twin GET waiting for its answer
        self._get_sent = 0.0
        self._get_wanted = False  # a GET is due (at connect, after a gap, after a throttle)
        self._version: int | None = None  # desired $version the document is at
        self._newest_patch = -1  # highest desired $version seen in a PATCH
        self._desired: Any = None  # the desired `gatewayd` value, as last merged
        self._delivered: bytes | None = None
        self._reported: dict[str, tuple[float, bytes]] = {}  # rid -> (sent at, body)
        self._state_pending: bytes | None = None  # waits for the throttle or the interval
        self._next_reported = 0.0  # monotonic: no reported PATCH before
        self._too_big_warned = False
        self._methods: dict[str, tuple[str, Any]] = {}  # our command id -> (rid, caller's id)
        self._refuse: list[tuple[str, str]] = []  # (rid, reason): unreadable methods, for tick

    def _next_rid(self) -> str:
        self._rid += 1
        return str(self._rid)

    def events_topic(self, events: str, subfolder: str) -> str:
        prop = "subfolder=" + urllib.parse.quote(subfolder, safe="")
        return events + prop if events.endswith("/") else f"{events}&{prop}"

    def subscriptions(self) -> list[str]:
        return [TWIN_RES + "#", TWIN_DESIRED + "#", METHODS + "#"]

    def connected(self, client: mqtt.Client) -> None:
        self._get_rid = None
        self._reported.clear()
        self._newest_patch = -1
        self._get_wanted = True
        self._send_get(client, time.monotonic())

    def _busy(self, now: float) -> bool:
        """Throttled: no request during the pause, and one at a time until one succeeds."""
        outstanding = self._get_rid is not None or bool(self._reported)
        return self.throttle.blocked(now) or (self.throttle.probing and outstanding)

    def _send_get(self, client: mqtt.Client, now: float) -> None:
        if self._busy(now):
            return
        rid = self._next_rid()
        if client.publish(f"$iothub/twin/GET/?$rid={rid}", b"", qos=1).rc == 0:
            self._get_rid, self._get_sent, self._get_wanted = rid, now, False

    def tick(self, client: mqtt.Client, now: float) -> None:
        if self._get_rid is not None and now - self._get_sent > REQUEST_TIMEOUT_S:
            log.warning("twin_get_unanswered timeout_s=%g; asking again", REQUEST_TIMEOUT_S)
            self._get_rid, self._get_wanted = None, True
        if self._get_wanted and self._get_rid is None:
            self._send_get(client, now)
        for rid, (sent, _) in list(self._reported.items()):
            if now - sent > REQUEST_TIMEOUT_S:
                del self._reported[rid]
        while self._refuse:
            rid, reason = self._refuse.pop(0)
            answer = {"id": rid, "status": "refused", "reason": reason}
            self._respond(client, rid, METHOD_STATUS["refused"], answer)
        if self._state_pending is not None and not self._busy(now) and now >= self._next_reported:
            body, self._state_pending = self._state_pending, None
            self._send_reported(client, body, now)

    # -- from the hub ------------------------------------------------------------------------

    def incoming(self, topic: str, payload: bytes) -> Incoming:
        if topic.startswith(TWIN_RES):
            status, params = _split(topic, TWIN_RES)
            return self._twin_response(status, params.get("$rid", ""), payload)
        if topic.startswith(TWIN_DESIRED):
            return self._desired_patch(payload)
        if topic.startswith(METHODS):
            name, params = _split(topic, METHODS)
            return self._method(name, params.get("$rid", ""), payload)
        log.debug("azure_unexpected_message topic=%s", topic)
        return None

    def _twin_response(self, status: str, rid: str, payload: bytes) -> Incoming:
        now = time.monotonic()
        if status == "429":
            pause = self.throttle.throttled(now)
            log.warning("twin_throttled rid=%s pause_s=%g (IoT Hub answered 429)", rid, pause)
            if rid == self._get_rid:
                self._get_rid, self._get_wanted = None, True
            elif rid in self._reported and self._state_pending is None:
                self._state_pending = self._reported[rid][1]
            self._reported.pop(rid, None)
            return None
        ok = status.startswith("2")
        if ok:
            self.throttle.succeeded()
        if rid in self._reported:
            del self._reported[rid]
            if not ok:
                log.warning("twin_reported_refused status=%s rid=%s", status, rid)
            return None
        if rid != self._get_rid:
            return None  # an answer to a request of an earlier session
        self._get_rid = None
        if not ok:
            log.warning("twin_get_failed status=%s; asking again", status)
            self._get_wanted = True
            self.throttle.throttled(now)  # a failing hub is not asked again at once either
            return None
        try:
            desired = json.loads(payload)["desired"]
            version = int(desired["$version"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("twin_get_unreadable error=%s", exc)
            return None
        self._version = version
        if self._newest_patch > version:  # a PATCH newer than this answer came meanwhile
            self._get_wanted = True
        return self._deliver(desired.get(DESIRED_KEY))

    def _desired_patch(self, payload: bytes) -> Incoming:
        try:
            patch = json.loads(payload)
            version = int(patch["$version"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("twin_patch_unreadable error=%s", exc)
            return None
        self._newest_patch = max(self._newest_patch, version)
        if self._version is None or self._get_rid is not None:
            if self._get_rid is None:
                self._get_wanted = True
            return None  # no base yet: the GET's answer (or the next one) brings it all
        if version <= self._version:
            return None  # already in the document
        if version != self._version + 1:
            log.info(
                "twin_patch_gap have=%d got=%d; reading the whole twin", self._version, version
            )
            self._get_wanted = True
            return None
        self._version = version
        if DESIRED_KEY not in patch:
            return None  # another desired property changed
        value = patch[DESIRED_KEY]
        if value is None:
            self._desired = None
            return None
        return self._deliver(merge_patch(self._desired, value))

    def _deliver(self, value: Any) -> Incoming:
        self._desired = value
        if value is None:
            return None
        if isinstance(value, str):  # a signed document (JWS)
            data = value.encode()
        else:
            data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        if data == self._delivered:
            log.debug("twin_config_unchanged version=%s", self._version)
            return None
        self._delivered = data
        return ConfigPush(data)

    def _method(self, name: str, rid: str, payload: bytes) -> Incoming:
        """A command for commands.py; an unreadable payload is refused at the next tick."""
        try:
            body = parse_command(payload) if payload.strip() else None
            if body is None:
                body = {}
            if not isinstance(body, dict):
                raise ValueError("a method's payload is a JSON object")
        except (ValueError, RecursionError) as exc:
            self._refuse.append((rid, f"malformed command: {exc}"))
            return None
        caller_id = body.pop("id", None)
        doc = body if name == "write" else {**body, "command": name}
        token = f"method:{rid}"
        if len(self._methods) >= MAX_PENDING_METHODS:
            self._methods.pop(next(iter(self._methods)))
        self._methods[token] = (rid, caller_id)
        doc["id"] = token
        return CommandIn(json.dumps(doc, allow_nan=False).encode())

    # -- to the hub --------------------------------------------------------------------------

    def report_state(self, client: mqtt.Client, payload: bytes) -> bool:
        body = b'{"' + DESIRED_KEY.encode() + b'":' + payload + b"}"
        if len(body) > REPORTED_MAX_BYTES:
            if not self._too_big_warned:
                log.warning(
                    "twin_reported_too_big bytes=%d limit=%d fix=%s",
                    len(body),
                    REPORTED_MAX_BYTES,
                    "fewer devices or counters per gateway; IoT Hub refuses larger reported "
                    "properties",
                )
                self._too_big_warned = True
            return True
        now = time.monotonic()
        if self._busy(now) or now < self._next_reported:
            self._state_pending = body  # the newest waits; older ones are superseded
            return True
        return self._send_reported(client, body, now)

    def _send_reported(self, client: mqtt.Client, body: bytes, now: float) -> bool:
        rid = self._next_rid()
        topic = f"$iothub/twin/PATCH/properties/reported/?$rid={rid}"
        if client.publish(topic, body, qos=1).rc != 0:
            return False
        self._reported[rid] = (now, body)
        self._next_reported = now + REPORTED_MIN_INTERVAL_S
        return True

    def report_outcome(self, client: mqtt.Client, outcome: dict[str, Any]) -> None:
        pass  # outcomes travel in the reported state document

    def answer(self, client: mqtt.Client, result: dict[str, Any]) -> bool:
        found = self._methods.pop(str(result.get("id")), None)
        if found is None:
            log.debug("method_result_unmatched id=%r", result.get("id"))
            return False
        rid, caller_id = found
        body = {**result, "id": caller_id if caller_id is not None else rid}
        return self._respond(client, rid, METHOD_STATUS.get(str(result.get("status")), 500), body)

    def _respond(self, client: mqtt.Client, rid: str, status: int, body: dict[str, Any]) -> bool:
        topic = f"$iothub/methods/res/{status}/?$rid={rid}"
        return client.publish(topic, json.dumps(body, allow_nan=False), qos=1).rc == 0
