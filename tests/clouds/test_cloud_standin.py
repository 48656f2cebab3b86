"""The embedded cloud stand-in checks device JWTs the way Cloud IoT Core did."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    BrokerThread,
    connack_code,
    free_port,
    gateway_toml,
    start_gateway,
    start_modbus_sim,
    wait_for,
    write_config,
)

from gatewayd.uplink.device_jwt import generate_key, load_private_key, mint_jwt
from gatewayd_sim.cloud import Broker, Registry

FIXTURES = Path(__file__).parent.parent / "fixtures"
CLIENT_ID = "projects/p1/locations/r1/registries/reg1/devices/gw-test"
NOT_AUTHORIZED = 135  # paho's reason code for MQTT 3.1.1 CONNACK 5


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[BrokerThread, Path]]:
    key = tmp_path / "device.key"
    registry = Registry("p1", "r1", "reg1")
    registry.add("gw-test", generate_key(key, "ES256"))
    bt = BrokerThread(Broker(registry))
    try:
        yield bt, key
    finally:
        bt.stop()


def test_gateway_with_valid_jwt_delivers_to_cloud(
    cloud: tuple[BrokerThread, Path], procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    bt, _key = cloud
    device_port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    auth = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
    cfg = write_config(
        tmp_path / "gw.toml", gateway_toml(tmp_path, bt.port, device_port, points, auth=auth)
    )
    start_gateway(cfg, procs, tmp_path / "gw.log")
    rec = bt.broker.recorder
    wait_for(lambda: rec.unique >= 50, 20, "50 records at the cloud")
    assert rec.duplicates == 0
    assert any(e.accepted and e.client_id == CLIENT_ID for e in bt.broker.auth_log)


def test_expired_token_is_refused(cloud: tuple[BrokerThread, Path]) -> None:
    bt, key = cloud
    token = mint_jwt(load_private_key(key, "ES256"), "ES256", "p1", 60, now=time.time() - 3600)
    assert connack_code(bt.port, CLIENT_ID, token) == NOT_AUTHORIZED
    assert bt.broker.auth_log[-1].reason == "token expired"


def test_token_signed_by_another_key_is_refused(
    cloud: tuple[BrokerThread, Path], tmp_path: Path
) -> None:
    bt, _key = cloud
    other = tmp_path / "other.key"
    generate_key(other, "ES256")
    token = mint_jwt(load_private_key(other, "ES256"), "ES256", "p1", 600)
    assert connack_code(bt.port, CLIENT_ID, token) == NOT_AUTHORIZED
    assert bt.broker.auth_log[-1].reason == "signature does not match a registered key"


def test_valid_token_is_accepted_and_wrong_audience_refused(
    cloud: tuple[BrokerThread, Path],
) -> None:
    bt, key = cloud
    k = load_private_key(key, "ES256")
    assert connack_code(bt.port, CLIENT_ID, mint_jwt(k, "ES256", "p1", 600)) == 0
    assert connack_code(bt.port, CLIENT_ID, mint_jwt(k, "ES256", "other", 600)) == NOT_AUTHORIZED
    assert bt.broker.auth_log[-1].reason == "wrong audience"


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    from gatewayd.uplink.device_jwt import DeviceKeyError

    key = tmp_path / "device.key"
    generate_key(key, "ES256")
    key.chmod(0o644)
    with pytest.raises(DeviceKeyError, match="chmod 600"):
        load_private_key(key, "ES256")
