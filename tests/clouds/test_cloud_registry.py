"""The cloud stand-in's registry rules and its command line (serve, push-config, command)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from helpers import BrokerThread, connack_code, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.uplink.device_jwt import generate_key, load_private_key, mint_jwt
from gatewayd_sim.cloud import Broker, Registry

CLIENT_ID = "projects/p1/locations/r1/registries/reg1/devices/gw-test"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[BrokerThread, object]]:
    registry = Registry("p1", "r1", "reg1")
    registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
    bt = BrokerThread(Broker(registry))
    try:
        yield bt, load_private_key(tmp_path / "device.key", "ES256")
    finally:
        bt.stop()


@pytest.mark.parametrize(
    ("iat_offset", "lifetime", "reason"),
    [
        (0, 24 * 3600, "ok"),
        (0, 24 * 3600 + 1, "lifetime over 24 h"),
        (9 * 60, 600, "ok"),  # a gateway clock 9 minutes ahead is tolerated
        (11 * 60, 600, "iat is in the future"),
        (-7200, 3600, "token expired"),
    ],
)
def test_registry_time_rules(
    cloud: tuple[BrokerThread, object], iat_offset: int, lifetime: int, reason: str
) -> None:
    bt, key = cloud
    token = mint_jwt(key, "ES256", "p1", lifetime, now=time.time() + iat_offset)
    code = connack_code(bt.port, CLIENT_ID, token)
    assert bt.broker.auth_log[-1].reason == reason
    assert (code == 0) == (reason == "ok")


def test_unknown_device_and_foreign_registry_are_refused(
    cloud: tuple[BrokerThread, object],
) -> None:
    bt, key = cloud
    token = mint_jwt(key, "ES256", "p1", 600)
    connack_code(bt.port, CLIENT_ID.replace("gw-test", "gw-other"), token)
    assert bt.broker.auth_log[-1].reason == "device 'gw-other' is not registered"
    connack_code(bt.port, CLIENT_ID.replace("reg1", "reg2"), token)
    assert "is not a device of this registry" in bt.broker.auth_log[-1].reason


def test_cli_serves_pushes_retained_config_and_sends_commands(tmp_path: Path) -> None:
    pub = tmp_path / "gw.pub"
    pub.write_bytes(generate_key(tmp_path / "device.key", "ES256"))
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatewayd_sim",
            "cloud",
            "--device",
            f"gw1={pub}",
            "--admin-password",
            "adm",
            "--project",
            "p1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        port = int(re.search(r":(\d+),", serve.stdout.readline()).group(1))  # type: ignore[union-attr]
        doc = tmp_path / "config.json"
        doc.write_text('{"version": 2}')

        def cli(*args: str) -> str:
            base = [sys.executable, "-m", "gatewayd_sim", "cloud", *args]
            p = subprocess.run(
                [*base, "--port", str(port), "--admin-password", "adm", "--to", "gw1"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert p.returncode == 0, p.stderr
            return p.stdout

        assert "to /devices/gw1/config" in cli("push-config", str(doc))
        # Subscribing after the push still gets the config: it is retained.
        got: list[tuple[str, bytes]] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
        sub.username_pw_set("observer", "adm")
        sub.on_message = lambda c, u, m: got.append((m.topic, m.payload))
        sub.on_connect = lambda c, *a: c.subscribe("/devices/gw1/#", qos=1)
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        try:
            wait_for(lambda: got, 10, "retained config")
            cli("command", "open-valve", "--subfolder", "valves")
            wait_for(lambda: len(got) == 2, 10, "command")
        finally:
            sub.loop_stop()
            sub.disconnect()
        assert got == [
            ("/devices/gw1/config", b'{"version": 2}'),
            ("/devices/gw1/commands/valves", b"open-valve"),
        ]
    finally:
        serve.kill()
        serve.wait(5)
