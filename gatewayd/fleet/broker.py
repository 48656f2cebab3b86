"""Fleet's own MQTT connection: settings (flags or a TOML file), the gateways' documents, pushes.

Invariants:
- MQTT 3.1.1, QoS 1, clean session: what every profile's broker takes (NATS speaks no MQTT 5);
- the latest state and config document of every gateway is kept in memory, keyed by the id
  taken from the topic; after a reconnect the broker sends the retained ones again;
- a connection that dies moves to the next of `hosts` (round robin); publishes are QoS 1 and
  their PUBACKs awaited together (`wait_published`); the caller re-checks the broker before
  sending again after a failure (gatewayd/fleet/waves.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import threading
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gatewayd.errors import GatewaydError

# paho's bound on messages awaiting their PUBACK: above any job's window (waves.py).
WINDOW_MAX = 256
# A refused SUBSCRIBE is asked for again on the same session, this often, for this long. NATS
# refuses while JetStream recovers from a lost node (its 4 s request timeout per consumer) and
# then grants; a new session instead (its deletion, its consumers) only adds to that work.
RESUBSCRIBE_S = 2.0
GRANT_WAIT_S = 60.0


class FleetError(GatewaydError):
    """Something fleet cannot do; the message says what and how to fix it."""


@dataclass(frozen=True)
class BrokerSettings:
    hosts: tuple[tuple[str, int], ...] = (("127.0.0.1", 1883),)
    username: str | None = None
    password: str | None = None
    client_id: str = ""
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    keepalive_s: int = 15
    # Topic templates; {gateway} is the gateway's device id (the uplink's {device}).
    state_topic: str = "/devices/{gateway}/state"
    config_topic: str = "/devices/{gateway}/config"
    commands_topic: str = "/devices/{gateway}/commands"  # `fleet update` sends its command here


def parse_hosts(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise FleetError(f"--host {item!r}: not host or host:port; write e.g. broker1:8883")
        out.append((host, int(port)))
    if not out:
        raise FleetError("--host: no broker given; write e.g. --host broker1:8883,broker2:8883")
    return tuple(out)


_FILE_KEYS = {
    "hosts",
    "host",
    "port",
    "username",
    "password",
    "client_id",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
    "insecure",
    "state_topic",
    "config_topic",
    "commands_topic",
}


def load_settings(path: str | None, **flags: Any) -> BrokerSettings:
    """A small TOML file (`[broker]` table), then the flags given on the command line over it."""
    s = BrokerSettings()
    values: dict[str, Any] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise FleetError(f"{path}: {exc}; fix the file or give the flags instead") from exc
        table = doc.get("broker", {})
        unknown = set(table) - _FILE_KEYS
        if unknown or set(doc) - {"broker"}:
            raise FleetError(
                f"{path}: unknown keys {sorted(unknown or set(doc) - {'broker'})}; "
                f"[broker] takes {', '.join(sorted(_FILE_KEYS))}"
            )
        values.update(table)
    values.update({k: v for k, v in flags.items() if v is not None})
    port = int(values.pop("port", 1883))
    hosts = values.pop("hosts", None) or values.pop("host", None)
    values.pop("host", None)
    if hosts is not None:
        text = ",".join(hosts) if isinstance(hosts, list) else str(hosts)
        s = replace(s, hosts=parse_hosts(text, port))
    elif port != 1883:
        s = replace(s, hosts=(("127.0.0.1", port),))
    for key in ("state_topic", "config_topic", "commands_topic"):
        if key in values and "{gateway}" not in str(values[key]):
            raise FleetError(
                f"{key} {values[key]!r} lacks {{gateway}}; e.g. /devices/{{gateway}}/state"
            )
    return replace(s, **values)


@dataclass
class Seen:
    doc: dict[str, Any]
    at: float  # wall time it arrived here
    retained: bool


class FleetBroker:
    """One paho client on its own network thread; documents kept as they arrive."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.s = settings
        self.lock = threading.Lock()
        self.states: dict[str, Seen] = {}
        self.configs: dict[str, Seen] = {}
        self.changed = threading.Condition(self.lock)
        self._host_index = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._asked: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its topics
        self._refused_topics: list[str] = []  # what the last SUBACK refused
        self._last_message = time.monotonic()
        self.host_in_use: tuple[str, int] | None = None
        self.connects = 0  # sessions so far: a new one brings the retained documents again
        self._cid = settings.client_id or f"gatewayd-fleet-{os.getpid()}-{time.time_ns()}"
        self.client: Any = None
        self._state_re = _topic_regex(settings.state_topic)
        self._config_re = _topic_regex(settings.config_topic)

    def _new_client(self) -> Any:
        """A fresh client per session: paho's own reconnect would retry the dead host."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        s = self.s
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self._cid, protocol=mqtt.MQTTv311,
            clean_session=True, reconnect_on_failure=False,
        )  # fmt: skip
        c.max_inflight_messages_set(WINDOW_MAX)  # a wave's sends are pipelined (waves.py)
        if s.username is not None:
            c.username_pw_set(s.username, s.password)
        if s.tls:
            c.tls_set(
                ca_certs=s.ca_file,
                certfile=s.cert_file,
                keyfile=s.key_file,
                cert_reqs=ssl.CERT_NONE if s.insecure else ssl.CERT_REQUIRED,
            )
            if s.insecure:
                c.tls_insecure_set(True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    # -- connection ---------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect to the first host that answers, from the current one on; raises FleetError
        naming every failure."""
        errors = []
        for _ in range(len(self.s.hosts)):
            host, port = self.s.hosts[self._host_index]
            try:
                self._connect_one(host, port, timeout_s)
                return
            except (OSError, FleetError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                self._host_index = (self._host_index + 1) % len(self.s.hosts)
        raise FleetError(
            "cannot reach the broker (" + "; ".join(errors) + "); check --host, the credentials "
            "and TLS options"
        )

    def _drop_client(self) -> None:
        old, self.client = self.client, None
        if old is not None:
            old.on_disconnect = None
            with contextlib.suppress(Exception):
                old.disconnect()
            old.loop_stop()

    def _connect_one(self, host: str, port: int, timeout_s: float) -> None:
        self._drop_client()
        self._connected.clear()
        self._subscribed.clear()
        self._refused = None
        self._asked, self._refused_topics = {}, []
        self.client = self._new_client()
        self.client.connect(host, port, self.s.keepalive_s)
        self.client.loop_start()
        if not self._connected.wait(timeout_s) or self._refused:
            self._drop_client()
            raise FleetError(self._refused or f"no CONNACK within {timeout_s:g} s")
        self._await_grants(timeout_s)
        self.host_in_use = (host, port)
        self.connects += 1

    def _await_grants(self, timeout_s: float) -> None:
        """Until every subscription is granted, asking again for the refused ones on this
        session (RESUBSCRIBE_S); raises FleetError after GRANT_WAIT_S or a lost session."""
        deadline = time.monotonic() + GRANT_WAIT_S
        while True:
            if not self._subscribed.wait(timeout_s) or self._refused:
                self._drop_client()
                raise FleetError(self._refused or f"no SUBACK within {timeout_s:g} s")
            refused = self._refused_topics
            if not refused:
                return
            if time.monotonic() > deadline or not self._connected.is_set():
                self._drop_client()
                raise FleetError(
                    f"the broker refused the subscription to {', '.join(refused)} for "
                    f"{GRANT_WAIT_S:g} s; check the fleet user's permissions on those topics"
                )
            time.sleep(RESUBSCRIBE_S)
            self._subscribed.clear()
            self._subscribe(self.client, refused)

    def _subscribe(self, client: Any, topics: list[str]) -> None:
        with self.lock:  # the SUBACK may come before subscribe() returns the mid
            _, mid = client.subscribe([(t, 1) for t in topics])
            self._asked[mid] = topics

    def ensure_connected(self, timeout_s: float = 10.0) -> bool:
        """Reconnect (next host first) when the session died; False if no host answered."""
        if self._connected.is_set():
            return True
        self._host_index = (self._host_index + 1) % len(self.s.hosts)
        try:
            self.connect(timeout_s)
        except FleetError:
            return False
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def close(self) -> None:
        self._drop_client()

    def settle(self, quiet_s: float = 0.5, max_s: float = 3.0) -> None:
        """Wait for the retained documents: until nothing new came for `quiet_s` (or `max_s`)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_s:
            if (
                time.monotonic() - self._last_message >= quiet_s
                and time.monotonic() - t0 >= quiet_s
            ):
                return
            time.sleep(0.05)

    # -- documents ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> Any | None:
        """QoS 1, not waited for: paho's MessageInfo (see `wait_published`), None when the
        session is down."""
        client = self.client
        if client is None or not self.connected:
            return None
        info = client.publish(topic, payload, qos=1, retain=retain)
        return None if info.rc != 0 else info

    def wait_published(self, infos: list[Any], timeout_s: float = 10.0) -> dict[int, bool]:
        """Wait for the PUBACKs of messages published together; id(info) -> acknowledged.
        Stops early when the session dies (the rest count as not acknowledged)."""
        client = self.client
        deadline = time.monotonic() + timeout_s
        for info in infos:
            while (
                not info.is_published()
                and time.monotonic() < deadline
                and self.connected
                and client is self.client
            ):
                try:
                    info.wait_for_publish(0.2)
                except (RuntimeError, ValueError):
                    break
        return {id(i): bool(i.is_published()) for i in infos}

    def wait_change(self, timeout_s: float) -> None:
        with self.changed:
            self.changed.wait(timeout_s)

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if client is not self.client:
            return
        if rc.is_failure:
            self._refused = f"refused: {rc}"
            self._connected.set()
            return
        # QoS 1, though NATS backs each such subscription with a replicated JetStream consumer,
        # which a cluster recovering from a lost node refuses for minutes: at QoS 0, NATS 2.9.10
        # let state documents and pushes go missing in normal operation (README, "Figures").
        topics = [self.s.state_topic.format(gateway="+"), self.s.config_topic.format(gateway="+")]
        self._subscribe(client, topics)
        self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        if client is not self.client:
            return
        with self.lock:
            topics = self._asked.pop(mid, [])
        self._refused_topics = [
            t for t, c in zip(topics, codes, strict=False) if getattr(c, "is_failure", False)
        ]
        self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if client is not self.client:
            return
        self._connected.clear()
        with self.changed:
            self.changed.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._last_message = time.monotonic()
        for pattern, into in ((self._state_re, self.states), (self._config_re, self.configs)):
            m = pattern.fullmatch(msg.topic)
            if m is None:
                continue
            gw = m.group(1)
            if not msg.payload:  # a cleared retained message
                with self.changed:
                    into.pop(gw, None)
                return
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                doc = {"unreadable": msg.payload[:80].decode(errors="replace")}
            if not isinstance(doc, dict):
                doc = {"unreadable": str(doc)[:80]}
            with self.changed:
                into[gw] = Seen(doc, time.time(), bool(msg.retain))
                self.changed.notify_all()
            return


def _topic_regex(template: str) -> re.Pattern[str]:
    before, _, after = template.partition("{gateway}")
    return re.compile(re.escape(before) + r"([^/]+)" + re.escape(after))
