"""The ThingsBoard stand-in, checked by ThingsBoard's own Python SDK and by hostile raw clients."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import BrokerThread, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from sdk_venv import Flow, sdk_python

from gatewayd_sim.cloud.mqtt_wire import CONNECT, PUBLISH, mqtt_str, packet
from gatewayd_sim.cloud.thingsboard import ThingsBoard

DEVICE_TOKEN, GATEWAY_TOKEN = "A1_TEST_TOKEN", "GW_TEST_TOKEN"


@pytest.fixture(scope="session")
def tb_sdk() -> Path:
    # The SDK pip-installs mmh3 at import time when it is missing; install it up front.
    return sdk_python("tb-mqtt-client", ["tb-mqtt-client>=1.13,<2", "mmh3"], "tb_gateway_mqtt")


@pytest.fixture
def tb() -> Iterator[tuple[BrokerThread, ThingsBoard]]:
    cloud = ThingsBoard()
    cloud.add_device("dev1", DEVICE_TOKEN)
    cloud.add_device("gw1", GATEWAY_TOKEN, gateway=True)
    bt = BrokerThread(cloud)
    try:
        yield bt, cloud
    finally:
        bt.stop()


def _on_loop(bt: BrokerThread, fn: Any, *args: Any) -> None:
    bt.loop.call_soon_threadsafe(fn, *args)


def _sdk_flow(
    tb_sdk: Path,
    tb: tuple[BrokerThread, ThingsBoard],
    args: list[str],
    device: str,
    shared: dict[str, Any],
    rpc_params: dict[str, Any],
) -> dict[str, Any]:
    """Run tb_device.py (`args`: role, token[, device]) through its steps: the cloud sets the
    shared attributes `shared` on `device`, then calls its RPC setValve(`rpc_params`) and waits
    for the answer; the script's results."""
    bt, cloud = tb
    flow = Flow(tb_sdk, "tb_device.py", args[0], str(bt.port), *args[1:])
    try:
        flow.expect_ready("shared")
        _on_loop(bt, cloud.set_shared, device, shared)
        flow.go()
        flow.expect_ready("rpc")
        _on_loop(bt, cloud.send_rpc, device, "setValve", rpc_params)
        flow.go()
        flow.expect_ready("rpc-answered")
        wait_for(lambda: (device, 1) in cloud.rpc_replies, 20, f"{device}'s RPC answer")
        flow.go()
        return flow.results()
    finally:
        flow.close()


def test_sdk_device_telemetry_attributes_and_rpc(
    tb_sdk: Path, tb: tuple[BrokerThread, ThingsBoard]
) -> None:
    cloud = tb[1]
    r = _sdk_flow(tb_sdk, tb, ["device", DEVICE_TOKEN], "dev1", {"interval_s": 5}, {"open": True})
    assert r["connected"] and r["service_configuration"]  # getSessionLimits was answered
    assert r["publish_rcs"] == [0, 0, 0]
    assert r["shared_update"] == {"interval_s": 5}
    assert r["attribute_response"] == [
        {"client": {"firmware": "1.4.2"}, "shared": {"interval_s": 5}},
        None,
    ]
    assert r["rpc_request"] == ["1", {"method": "setValve", "params": {"open": True}}]
    assert cloud.rpc_replies[("dev1", 1)] == {"ok": True, "echo": {"open": True}}
    dev = cloud.devices["dev1"]
    assert dev.client == {"firmware": "1.4.2"}
    assert [v for _ts, v in dev.telemetry] == [
        {"id": 1, "temperature": 21.5},
        {"id": 2, "temperature": 22.0},
    ]
    assert dict(cloud.recorder.counts) == {1: 1, 2: 1} and cloud.recorder.malformed == 0


def test_sdk_gateway_connects_a_device_and_carries_its_telemetry_attributes_and_rpc(
    tb_sdk: Path, tb: tuple[BrokerThread, ThingsBoard]
) -> None:
    cloud = tb[1]
    args = ["gateway", GATEWAY_TOKEN, "Boiler A"]
    r = _sdk_flow(tb_sdk, tb, args, "Boiler A", {"setpoint": 60}, {"open": False})
    assert r["connected"] and r["service_configuration"]
    assert r["publish_rcs"] == [0, 0, 0]
    assert r["shared_update"] == {"device": "Boiler A", "data": {"setpoint": 60}}
    assert r["attribute_response"] == [
        {"id": 1, "device": "Boiler A", "values": {"setpoint": 60}},
        None,
    ]
    assert r["rpc_request"] == {
        "device": "Boiler A",
        "data": {"id": 1, "method": "setValve", "params": {"open": False}},
    }
    assert cloud.rpc_replies[("Boiler A", 1)] == {"done": True}
    assert cloud.events == [("gw1", "connect", "Boiler A"), ("gw1", "disconnect", "Boiler A")]
    boiler = cloud.devices["Boiler A"]
    assert boiler.client == {"model": "B-200"}
    assert [v["id"] for _ts, v in boiler.telemetry] == [10, 11, 12]
    assert dict(cloud.recorder.counts) == {10: 1, 11: 1, 12: 1}
    assert cloud.recorder.malformed == 0


# -- paho and raw sockets: auth, isolation, hostile peers -----------------------------------------


class Paho:
    def __init__(self, port: int, token: str, protocol: int = mqtt.MQTTv311) -> None:
        self.codes: list[int] = []
        self.got: list[tuple[str, Any]] = []
        self.granted: list[int] = []
        self.connected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=token, protocol=protocol)
        self.c.username_pw_set(token)
        self.c.on_connect = lambda c, u, f, rc, p: (
            self.codes.append(rc.value),
            self.connected.set(),
        )
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.granted.extend(r.value for r in rcs)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_unknown_token_is_refused(tb: tuple[BrokerThread, ThingsBoard], protocol: int) -> None:
    bt, cloud = tb
    p = Paho(bt.port, "WRONG", protocol)
    p.close()
    assert p.codes == [0x87]  # paho reports 3.1.1's code 5 as MQTT 5's "not authorized" too
    assert cloud.auth_log[-1].reason == "unknown access token"


def test_devices_see_only_their_own_me_topics_and_no_gateway_api(
    tb: tuple[BrokerThread, ThingsBoard],
) -> None:
    bt, cloud = tb
    cloud.add_device("dev2", "T2")
    a, b = Paho(bt.port, DEVICE_TOKEN), Paho(bt.port, "T2")
    try:
        b.c.subscribe([("v1/devices/me/#", 1), ("v1/gateway/rpc", 1)])
        wait_for(lambda: len(b.granted) == 2, 10, "SUBACK")
        assert b.granted == [1, 0x80]  # a plain device may not use the gateway API
        a.c.publish("v1/devices/me/telemetry", '{"id": 7}', qos=1).wait_for_publish(10)
        a.c.publish("v1/devices/me/attributes", '{"fw": "2"}', qos=1).wait_for_publish(10)
        _on_loop(bt, cloud.set_shared, "dev2", {"only": "dev2"})
        wait_for(lambda: b.got, 10, "dev2's attribute update")
        time.sleep(0.5)  # would dev1's publishes leak to dev2, they would be here by now
        assert b.got == [("v1/devices/me/attributes", {"only": "dev2"})]
        assert cloud.devices["dev1"].client == {"fw": "2"} and cloud.devices["dev2"].client == {}
    finally:
        a.close()
        b.close()


def _connect_raw(port: int, token: str, level: int = 4) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    props = b"\x00" if level == 5 else b""
    body = mqtt_str("MQTT") + bytes([level, 0x82]) + struct.pack(">H", 60) + props + mqtt_str("x")
    s.sendall(packet(CONNECT, 0, body + mqtt_str(token)))
    assert s.recv(5) == (b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
    return s


def _gone(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_hostile_peers_leave_the_stand_in_serving_and_counting_nothing(
    tb: tuple[BrokerThread, ThingsBoard],
) -> None:
    bt, cloud = tb
    with socket.create_connection(("127.0.0.1", bt.port), timeout=10) as s:
        s.sendall(b"\xde\xad\xbe\xef" * 64)
        assert _gone(s)
    with socket.create_connection(("127.0.0.1", bt.port), timeout=10) as s:
        s.sendall(packet(CONNECT, 0, mqtt_str("MQTT") + bytes([5])))  # framed, cut short
        assert _gone(s)
    s = _connect_raw(bt.port, GATEWAY_TOKEN)  # gone mid-publish
    whole = packet(PUBLISH, 0x02, mqtt_str("v1/gateway/telemetry") + b"\x00\x01" + b'{"D": [{}]}')
    s.sendall(whole[:-3])
    s.close()
    s = _connect_raw(bt.port, GATEWAY_TOKEN)  # a topic length longer than the packet
    s.sendall(packet(PUBLISH, 0x02, b"\x00\xff" + b"v1/gateway/telemetry"))
    assert _gone(s)
    s = _connect_raw(bt.port, GATEWAY_TOKEN, level=5)  # MQTT 5 properties longer than the packet
    s.sendall(packet(PUBLISH, 0x02, mqtt_str("v1/gateway/telemetry") + b"\x00\x01\x7f{}"))
    assert _gone(s)
    s = _connect_raw(bt.port, GATEWAY_TOKEN)  # garbage after a good CONNECT
    s.sendall(b"\xff" * 32)
    assert _gone(s)
    assert cloud.recorder.messages == 0 and cloud.recorder.malformed == 0
    # Still serving; a payload that is not JSON is malformed, and only that.
    s = _connect_raw(bt.port, GATEWAY_TOKEN)
    s.sendall(packet(PUBLISH, 0x02, mqtt_str("v1/gateway/telemetry") + b"\x00\x02" + b"{not json"))
    good = json.dumps({"Boiler A": [{"ts": 1, "values": {"id": 5}}]}).encode()
    s.sendall(packet(PUBLISH, 0x02, mqtt_str("v1/gateway/telemetry") + b"\x00\x03" + good))
    s.settimeout(10)
    acks = b""
    while len(acks) < 8:
        acks += s.recv(8 - len(acks))
    assert acks == b"\x40\x02\x00\x02\x40\x02\x00\x03"
    s.close()
    assert dict(cloud.recorder.counts) == {5: 1} and cloud.recorder.malformed == 1


def test_cli_serves_devices_sets_shared_attributes_and_sends_an_rpc(tmp_path: Path) -> None:
    sim = [sys.executable, "-m", "gatewayd_sim", "thingsboard"]
    serve = subprocess.Popen(
        [
            *sim,
            "--token",
            f"dev1={DEVICE_TOKEN}",
            "--gateway-token",
            f"gw1={GATEWAY_TOKEN}",
            "--admin-password",
            "adm",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline()
        assert "devices dev1, gw1" in first
        port = int(re.search(r":(\d+),", first).group(1))  # type: ignore[union-attr]
        dev = Paho(port, DEVICE_TOKEN)
        try:
            dev.c.subscribe([("v1/devices/me/attributes", 1), ("v1/devices/me/rpc/request/+", 1)])
            wait_for(lambda: len(dev.granted) == 2, 10, "SUBACK")

            def cli(*args: str) -> None:
                done = subprocess.run(
                    [*sim, *args, "--to", "dev1", "--port", str(port), "--admin-password", "adm"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert done.returncode == 0, done.stderr

            (tmp_path / "attrs.json").write_text('{"interval_s": 15}')
            cli("set-attributes", str(tmp_path / "attrs.json"))
            cli("rpc", "reboot", "--params", '{"delay_s": 3}')
            wait_for(lambda: len(dev.got) == 2, 10, "the attribute update and the RPC")
        finally:
            dev.close()
        assert dev.got == [
            ("v1/devices/me/attributes", {"interval_s": 15}),
            ("v1/devices/me/rpc/request/1", {"method": "reboot", "params": {"delay_s": 3}}),
        ]
    finally:
        serve.kill()
        serve.wait(5)


def test_attribute_answers_leave_out_what_was_not_found(
    tb: tuple[BrokerThread, ThingsBoard],
) -> None:
    bt, cloud = tb
    _on_loop(bt, cloud.set_shared, "Boiler A", {"setpoint": 60, "mode": "eco"})
    _on_loop(bt, cloud.set_shared, "dev1", {"interval_s": 5})
    gw, dev = Paho(bt.port, GATEWAY_TOKEN), Paho(bt.port, DEVICE_TOKEN)
    try:
        gw.c.subscribe("v1/gateway/attributes/response", 1)
        dev.c.subscribe("v1/devices/me/attributes/response/+", 1)
        wait_for(lambda: len(gw.granted) == 1 and len(dev.granted) == 1, 10, "SUBACKs")
        requests = [
            {"id": 1, "device": "Boiler A", "client": False, "key": "setpoint"},
            {"id": 2, "device": "Boiler A", "client": False, "keys": ["setpoint", "nope"]},
            {"id": 3, "device": "Boiler A", "client": False, "key": "nope"},
            {"id": 4, "device": "Boiler A", "client": True, "keys": ["setpoint"]},
        ]
        for req in requests:
            gw.c.publish("v1/gateway/attributes/request", json.dumps(req), qos=1)
        dev.c.publish(
            "v1/devices/me/attributes/request/9",
            '{"clientKeys": "fw", "sharedKeys": "interval_s"}',
            qos=1,
        )
        wait_for(lambda: len(gw.got) == 4 and len(dev.got) == 1, 10, "the answers")
    finally:
        gw.close()
        dev.close()
    assert sorted((m for _t, m in gw.got), key=lambda m: m["id"]) == [
        {"id": 1, "device": "Boiler A", "value": 60},
        {"id": 2, "device": "Boiler A", "values": {"setpoint": 60}},
        {"id": 3, "device": "Boiler A"},
        {"id": 4, "device": "Boiler A"},
    ]
    assert dev.got == [("v1/devices/me/attributes/response/9", {"shared": {"interval_s": 5}})]
