"""`[uplink] profile`: a cloud's defaults as data, its hard limits refused by `gatewayd check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load

CLEARBLADE = """
[uplink]
profile = "clearblade"
project = "p1"
region = "us-central1"
registry = "reg1"
device = "gw-1"
[uplink.auth]
audience = "p1"
"""

NATS = """
[uplink]
profile = "mqtt"
broker = "nats"
host = "127.0.0.1"
port = 1883
device = "gw-1"
[uplink.auth]
kind = "none"
[uplink.tls]
enabled = false
"""


def _with(base: str, **settings: str) -> str:
    """`base` with `key = value` lines added to [uplink] (dotted keys go to their table)."""
    lines = base.strip().splitlines()
    for key, value in settings.items():
        table, _, name = key.rpartition("__")
        header = "[uplink" + (f".{table}]" if table else "]")
        if header not in lines:
            lines.append(header)
        lines.insert(lines.index(header) + 1, f"{name} = {value}")
    return "\n".join(lines) + "\n"


def test_clearblade_defaults_are_cloud_iot_core_on_a_regional_host() -> None:
    up = load(CLEARBLADE).uplink
    assert (up.profile, up.host, up.port, up.protocol) == (
        "clearblade",
        "us-central1-mqtt.clearblade.com",
        8883,
        "3.1.1",
    )
    assert up.client_id.format(**up.template_values()) == (
        "projects/p1/locations/us-central1/registries/reg1/devices/gw-1"
    )
    assert up.auth.kind == "jwt" and up.tls.enabled and up.auth.username == "unused"
    assert up.topics.events == "/devices/{device}/events"
    assert load(_with(CLEARBLADE, host='"eu.example"')).uplink.host == "eu.example"


def test_mqtt_profile_asks_for_host_and_auth_and_uses_the_device_as_client_id() -> None:
    up = load(NATS).uplink
    assert up.client_id == "{device}" and up.broker == "nats"
    assert up.auth.username == "{device}"  # each gateway its own user on the broker
    with pytest.raises(ConfigError, match=r'^uplink.host: missing, demanded by profile = "mqtt"'):
        load(NATS.replace('host = "127.0.0.1"\n', ""))
    with pytest.raises(ConfigError, match=r"^uplink.auth.kind: missing, demanded by profile"):
        load(NATS.replace('kind = "none"\n', ""))


def test_no_profile_keeps_todays_defaults_and_enforces_nothing_new() -> None:
    text = CLEARBLADE.replace('profile = "clearblade"\n', "")
    up = load(_with(text, protocol='"5"', retain_state="true")).uplink
    assert (up.profile, up.host, up.protocol) == ("", "mqtt.googleapis.com", "5")


@pytest.mark.parametrize(
    ("base", "settings", "error"),
    [
        (
            CLEARBLADE,
            {"protocol": '"5"'},
            "uplink.protocol: '5' is not supported (ClearBlade IoT Core does not allow it); "
            'set protocol = "3.1.1"',
        ),
        (
            CLEARBLADE,
            {"retain_state": "true"},
            "uplink.retain_state: true (ClearBlade IoT Core does not allow it)",
        ),
        (
            CLEARBLADE,
            {"presence__enabled": "true"},
            "uplink.presence.enabled: true: presence is a retained message",
        ),
        (
            CLEARBLADE,
            {"keepalive_s": "1200"},
            "uplink.keepalive_s: 1200 reaches the idle limit of 1200 s",
        ),
        (CLEARBLADE, {"tls__enabled": "false"}, "uplink.tls.enabled: false (ClearBlade"),
        (
            CLEARBLADE,
            {"batch_max_bytes": "300000"},
            "uplink.batch_max_bytes: 300000 is above the message limit of 262144",
        ),
        (
            CLEARBLADE.replace("clearblade", "cloud-iot-core"),
            {"auth__kind": '"password"', "auth__password": '"x"'},
            "uplink.auth.kind: 'password' (Cloud IoT Core does not allow it)",
        ),
        (NATS, {"protocol": '"5"'}, "uplink.protocol: '5' is not supported (NATS"),
        (
            NATS.replace('"gw-1"', '"ev.1"'),
            {},
            "uplink.topics.events: '/devices/ev.1/events' contains '.' (NATS does not allow it)",
        ),
        (
            NATS,
            {"topics__state": '"site a/{device}/state"'},
            "uplink.topics.state: 'site a/gw-1/state' contains ' ' (NATS",
        ),
        (
            NATS.replace('"nats"', '"rabbitmq"').replace('"gw-1"', '"ev.1"'),
            {},
            "uplink.topics.events: '/devices/ev.1/events' contains '.' (RabbitMQ",
        ),
        (
            CLEARBLADE,
            {"broker": '"nats"'},
            'uplink.broker: applies to profile = "mqtt" only',
        ),
    ],
)
def test_profile_limits_are_refused_with_place_and_fix(
    base: str, settings: dict[str, str], error: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_with(base, **settings))
    assert str(exc.value).startswith(error), str(exc.value)


def test_gatewayd_check_refuses_a_dot_in_a_nats_topic(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(NATS.replace('"gw-1"', '"ev.1"'))
    p = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2, p.stdout
    assert "uplink.topics.events: '/devices/ev.1/events' contains '.'" in p.stderr
    assert "choose a device id or a topic template without '.'" in p.stderr
