"""Uplink options against real brokers: persistent sessions, a TLS server name, templated claims,
presence (a retained online/offline with a last will) and a retained state document."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from blackhole_proxy import BlackHoleProxy
from helpers import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from uplink_harness import Harness, SecureMosquitto, jwt_auth, until, uplink_cfg

from gatewayd.config import AuthConfig, PresenceConfig, TlsConfig, example_path, load
from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry

COMMANDS = "/devices/gw-test/commands/ops"
PRESENCE = "/devices/gw-test/presence"


class Watcher:
    """A paho subscriber on its own thread that keeps every payload seen on `topic`."""

    def __init__(self, port: int, topic: str) -> None:
        self.seen: list[bytes] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{id(self)}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.seen.append(msg.payload)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return list(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _send_command(port: int, payload: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cloud-side")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(COMMANDS, payload, qos=1).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_persistent_session_delivers_commands_sent_while_offline(
    mosquitto: Mosquitto, tmp_path: Path, protocol: str
) -> None:
    cfg = uplink_cfg(mosquitto.port, protocol=protocol, clean_session=False)
    got: list[tuple[str, bytes]] = []

    async def scenario() -> None:
        first = await Harness.open(tmp_path, cfg)
        await until(lambda: first.uplink.subscribed, 10, "the first session subscribed")
        await first.close()
        _send_command(mosquitto.port, b"reboot")  # the gateway is offline
        again = await Harness.open(tmp_path, cfg, on_message=lambda t, p: got.append((t, p)))
        try:
            await until(lambda: got, 10, "the command queued by the broker")
        finally:
            await again.close()

    asyncio.run(scenario())
    assert got == [(COMMANDS, b"reboot")]


def test_server_name_override_verifies_a_name_while_connecting_by_ip(tmp_path: Path) -> None:
    m = SecureMosquitto(tmp_path / "broker", dns_names=("broker.example",))
    password = AuthConfig(kind="password", username="gw", password="s3cret")

    async def scenario() -> None:
        plain = TlsConfig(ca_file=str(m.ca.ca_file))
        h = await Harness.open(tmp_path, uplink_cfg(m.port, tls=plain, auth=password))
        try:  # 127.0.0.1 is not a name on the certificate
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert (h.uplink.last_error or "").startswith("TLS verification failed")
        finally:
            await h.close()
        named = dataclasses.replace(plain, server_name="broker.example")
        h = await Harness.open(tmp_path / "b", uplink_cfg(m.port, tls=named, auth=password))
        try:
            ids = await h.append(50)
            await h.drained(10)
            assert h.metrics.total("acked_records") == len(ids)
        finally:
            await h.close()

    (tmp_path / "b").mkdir()
    try:
        asyncio.run(scenario())
    finally:
        m.stop()


def test_claims_and_username_are_templated_with_the_device(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        broker = await Broker(registry).start()
        auth = jwt_auth(
            username="{device}",
            claims=(("sub", "{device}"), ("scope", "{project}.write:*/{device}/*"), ("n", 3)),
        )
        h = await Harness.open(tmp_path, uplink_cfg(broker.port, auth=auth))
        try:
            await until(lambda: h.uplink.connected, 10, "connected")
            ok = broker.auth_log[-1]
            assert ok.accepted and ok.username == "gw-test"
            assert ok.claims["sub"] == "gw-test"
            assert ok.claims["scope"] == "p1.write:*/gw-test/*"
            assert ok.claims["n"] == 3
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_presence_is_online_while_connected_offline_by_will_and_at_stop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cfg = uplink_cfg(mosquitto.port, presence=PresenceConfig(enabled=True))
    watch = Watcher(mosquitto.port, PRESENCE)

    async def scenario() -> None:
        proxy = await BlackHoleProxy(mosquitto.port).start()
        h = await Harness.open(tmp_path, dataclasses.replace(cfg, port=proxy.port))
        try:
            await until(lambda: watch.payloads() == [b"online"], 10, "online")
            await proxy.stop()  # the gateway vanishes without a DISCONNECT
            await until(lambda: watch.payloads() == [b"online", b"offline"], 10, "the will")
        finally:
            await h.close()
        h = await Harness.open(tmp_path, cfg)  # straight to the broker; a clean stop this time
        await until(lambda: watch.payloads()[2:] == [b"online"], 10, "online again")
        await h.close()
        await until(lambda: watch.payloads()[3:] == [b"offline"], 10, "offline at stop")

    try:
        asyncio.run(scenario())
    finally:
        watch.close()
    late = Watcher(mosquitto.port, PRESENCE)  # the last word is retained for newcomers
    try:
        asyncio.run(until(lambda: late.payloads() == [b"offline"], 10, "retained offline"))
    finally:
        late.close()


def test_state_document_is_retained_when_asked(tmp_path: Path) -> None:
    async def state() -> dict[str, object]:
        return {"config_version": 3}

    async def scenario() -> None:
        broker = await Broker().start()
        cfg = uplink_cfg(broker.port, retain_state=True)
        h = await Harness.open(tmp_path, cfg, state=state)
        try:
            await until(lambda: "/devices/gw-test/state" in broker.retained, 10, "retained state")
            assert broker.retained["/devices/gw-test/state"] == b'{"config_version":3}'
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_uplink_options_parse_from_toml() -> None:
    text = example_path().read_text()
    assert load(text).uplink.clean_session is True  # defaults: as before
    text = text.replace(
        "[uplink.tls]\n",
        "clean_session = false\nsession_expiry_s = 600\nretain_state = true\n"
        '[uplink.presence]\nenabled = true\ntopic = "gw/{device}/presence"\noffline = "gone"\n'
        "[uplink.tls]\n"
        'server_name = "mqtt.internal"\n',
    )
    up = load(text).uplink
    assert (up.clean_session, up.session_expiry_s, up.retain_state) == (False, 600, True)
    assert up.presence == PresenceConfig(True, "gw/{device}/presence", "online", "gone")
    assert up.tls.server_name == "mqtt.internal"
