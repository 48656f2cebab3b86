"""Device-key rotation against the cloud stand-in, under load: a real gateway process polling a
simulated PLC every 50 ms, the stand-in checking every CONNECT's JWT against the device's
registered keys (up to 3), every record counted by id at the cloud."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    BrokerThread,
    buffer_ids,
    delivered_range,
    free_port,
    gateway_toml,
    start_gateway,
    start_modbus_sim,
    wait_for,
    write_config,
)

from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry
from gatewayd_sim.cloud.registry import MAX_KEYS

FIXTURES = Path(__file__).parent.parent / "fixtures"
DEVICE = "gw-test"


class Cloud:
    def __init__(self, tmp_path: Path) -> None:
        self.registry = Registry("p1", "r1", "reg1")
        self.old_public = generate_key(tmp_path / "device.key", "ES256")
        self.registry.add(DEVICE, self.old_public)
        self.states: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        broker = Broker(self.registry)
        broker.on_message = self._on_message
        self.bt = BrokerThread(broker)

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self.lock:
            if topic == f"/devices/{DEVICE}/state":
                self.states.append(json.loads(payload))
            elif topic.endswith("/command-results"):
                self.results.append(json.loads(payload))

    def command(self, doc: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps(doc).encode()
        self.bt.loop.call_soon_threadsafe(self.bt.broker.send_command, DEVICE, payload)

        def found() -> dict[str, Any] | None:
            with self.lock:
                return next((r for r in self.results if r.get("id") == doc["id"]), None)

        return dict(wait_for(found, 20, f"the result of {doc['command']}"))

    def key_state(self, cond: Any, what: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            with self.lock:
                for s in reversed(self.states):
                    k = s.get("device_key")
                    if k and cond(k):
                        return dict(k)
            return None

        return dict(wait_for(found, timeout, what, interval=0.1))

    def drop_all(self) -> None:
        self.bt.loop.call_soon_threadsafe(self.bt.broker.drop_all)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    try:
        yield c
    finally:
        c.bt.stop()


def _gateway(cloud: Cloud, tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> Any:
    device_port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    auth = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
    text = gateway_toml(tmp_path, cloud.bt.port, device_port, points, interval_ms=50, auth=auth)
    cfg = write_config(
        tmp_path / "gw.toml", text.replace("[uplink]\n", '[metrics]\nlisten = ""\n[uplink]\n', 1)
    )
    return start_gateway(cfg, procs, tmp_path / "gw.log")


def _no_loss(cloud: Cloud, gw: Any, db: Path) -> None:
    """Stop the gateway; every id it ever stored is at the cloud or still in its buffer."""
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0
    kept = set(buffer_ids(db))
    rec = cloud.bt.broker.recorder
    lost = set(delivered_range(db)) - kept - rec.counts.keys()
    assert not lost, f"{len(lost)} records lost, e.g. {sorted(lost)[:5]}"


def test_rotation_under_load_switches_keys_and_loses_nothing(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    gw = _gateway(cloud, tmp_path, procs)
    rec = cloud.bt.broker.recorder
    wait_for(lambda: rec.unique >= 50, 30, "50 records at the cloud with the old key")

    r = cloud.command({"id": "r1", "command": "rotate_key"})
    assert r["status"] == "ok", r
    k = cloud.key_state(lambda k: "candidate" in k, "the new public key in the state")
    new = k["candidate"]
    kid = new["key_id"]
    assert new["algorithm"] == "ES256" and new["public_key"].startswith("-----BEGIN PUBLIC KEY")
    key_file = tmp_path / "keys" / f"{kid}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key_file.read_bytes()
    # Until it is committed, the old key keeps working (a reconnect still signs with it).
    cloud.drop_all()
    wait_for(lambda: sum(e.accepted for e in cloud.bt.broker.auth_log) >= 2, 20, "a reconnect")
    assert cloud.bt.broker.auth_log[-1].kid is None  # the configured key, not the candidate

    cloud.registry.add(DEVICE, new["public_key"])  # the operator registers it
    assert cloud.command({"id": "c1", "command": "commit_key"})["status"] == "ok"
    k = cloud.key_state(
        lambda k: (k.get("rotation") or {}).get("status") == "committed", "the key committed"
    )
    assert k["key_id"] == kid and "candidate" not in k
    assert cloud.bt.broker.auth_log[-1].accepted and cloud.bt.broker.auth_log[-1].kid == kid

    # The old key is withdrawn; the gateway reconnects with the new one only.
    cloud.registry.remove(DEVICE, cloud.old_public)
    n = rec.unique
    cloud.drop_all()
    wait_for(lambda: rec.unique >= n + 50, 30, "records after a reconnect with the new key")
    assert all(e.kid == kid for e in cloud.bt.broker.auth_log[-1:])

    _no_loss(cloud, gw, tmp_path / "buffer.sqlite")
    log = (tmp_path / "gw.log").read_text()
    assert "PRIVATE KEY" not in log and key_file.read_text().splitlines()[1] not in log


def test_new_key_refused_by_the_broker_goes_back_to_the_old_key_and_says_why(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    gw = _gateway(cloud, tmp_path, procs)
    rec = cloud.bt.broker.recorder
    wait_for(lambda: rec.unique >= 50, 30, "50 records at the cloud")
    assert cloud.command({"id": "r1", "command": "rotate_key"})["status"] == "ok"
    kid = cloud.key_state(lambda k: "candidate" in k, "the new key")["candidate"]["key_id"]
    # Not registered: the broker refuses it.
    assert cloud.command({"id": "c1", "command": "commit_key"})["status"] == "ok"
    k = cloud.key_state(
        lambda k: (k.get("rotation") or {}).get("status") == "refused", "the refusal reported"
    )
    reason = k["rotation"]["reason"]
    assert f"the broker refused key {kid}" in reason and "back on" in reason, reason
    assert k["key_id"] is None  # still the configured key
    refused = [e for e in cloud.bt.broker.auth_log if not e.accepted]
    assert refused and refused[-1].reason == "signature does not match a registered key"
    n = rec.unique
    wait_for(lambda: rec.unique >= n + 50, 30, "records still flowing on the old key")
    assert cloud.bt.broker.auth_log[-1].accepted and cloud.bt.broker.auth_log[-1].kid is None
    _no_loss(cloud, gw, tmp_path / "buffer.sqlite")


def test_registered_new_key_is_taken_at_the_first_connect_after_a_restart(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """No commit_key: the first CONNECT of a token's life tries the candidate (here, the first
    after a restart, which also shows the candidate survives one)."""
    gw = _gateway(cloud, tmp_path, procs)
    rec = cloud.bt.broker.recorder
    wait_for(lambda: rec.unique >= 20, 30, "records at the cloud")
    assert (
        cloud.command({"id": "r1", "command": "rotate_key", "algorithm": "RS256"})["status"] == "ok"
    )
    new = cloud.key_state(lambda k: "candidate" in k, "the new key")["candidate"]
    assert new["algorithm"] == "RS256"
    cloud.registry.add(DEVICE, new["public_key"])
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0
    with cloud.lock:
        cloud.states.clear()
    gw = start_gateway(tmp_path / "gw.toml", procs, tmp_path / "gw.log")
    k = cloud.key_state(
        lambda k: (k.get("rotation") or {}).get("status") == "committed", "committed at connect"
    )
    assert k["key_id"] == new["key_id"] and k["algorithm"] == "RS256"
    _no_loss(cloud, gw, tmp_path / "buffer.sqlite")


def test_a_candidate_past_its_deadline_is_deleted_and_reported(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    gw = _gateway(cloud, tmp_path, procs)
    wait_for(lambda: cloud.bt.broker.recorder.unique >= 1, 30, "a record at the cloud")
    assert cloud.command({"id": "r1", "command": "rotate_key", "deadline_s": 2})["status"] == "ok"
    kid = cloud.key_state(lambda k: "candidate" in k, "the new key")["candidate"]["key_id"]
    k = cloud.key_state(
        lambda k: (k.get("rotation") or {}).get("status") == "expired", "the expiry reported"
    )
    assert k["rotation"]["key_id"] == kid and "candidate" not in k
    assert not (tmp_path / "keys" / f"{kid}.key").exists()
    r = cloud.command({"id": "c1", "command": "commit_key"})
    assert r["status"] == "refused" and "send rotate_key first" in r["reason"], r
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0


def test_registry_holds_at_most_three_keys_per_device(tmp_path: Path) -> None:
    reg = Registry("p1", "r1", "reg1")
    pubs = [generate_key(tmp_path / f"k{i}.key", "ES256") for i in range(MAX_KEYS + 1)]
    for pub in pubs[:MAX_KEYS]:
        reg.add(DEVICE, pub)
    with pytest.raises(ValueError, match="already has 3 keys"):
        reg.add(DEVICE, pubs[-1])
    reg.remove(DEVICE, pubs[0])
    reg.add(DEVICE, pubs[-1])
    assert len(reg.devices[DEVICE].public_keys) == MAX_KEYS
