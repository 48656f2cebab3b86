"""The gateway under `profile = "azure-iot-hub"`, end to end: real processes, sockets and TLS.

gatewayd (a process, reading a Modbus simulator) -> the IoT Hub stand-in (hw-sim/cloud/azure.py)
with SAS auth: readings counted by id against the buffer's delivered range; a configuration
pushed as the desired property `gatewayd` applied live and its outcome read from the reported
property; a rollback reported there; a direct method executed and answered with its status; a
reconnect's twin GET not counted as a new outcome.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    BrokerThread,
    delivered_range,
    free_port,
    start_gateway,
    start_modbus_sim,
    wait_for,
    write_config,
)

from gatewayd_sim.cloud.azure import AzureHub, server_tls

FIXTURES = Path(__file__).parent.parent / "fixtures"
DEVICE = "gw-test"
WRITABLE = """
[[devices.points]]
id = "setpoint"
table = "holding"
address = 20
type = "int16"
scale = 0.1
writable = true
min = 30.0
max = 80.0
"""


def plc_device(device_port: int) -> str:
    """The tail every cloud's e2e config shares: a 3 s health deadline and the simulated PLC
    (tests/fixtures/plc_points.toml, and a writable setpoint) polled every 100 ms."""
    points = (FIXTURES / "plc_points.toml").read_text() + WRITABLE
    return f"""[remote_config]
health_deadline_s = 3.0
[[devices]]
id = "plc"
driver = "modbus_tcp"
port = {device_port}
interval_ms = 100
{points}
"""


def _config(tmp: Path, hub_port: int, ca: str, device_port: int) -> str:
    return f"""
version = 1
[gateway]
id = "gw-test"
state_dir = "{tmp}"
[uplink]
profile = "azure-iot-hub"
hub = "testhub"
host = "127.0.0.1"
port = {hub_port}
device = "{DEVICE}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
[uplink.tls]
ca_file = "{ca}"
[uplink.auth]
device_key_file = "device.key"
{plc_device(device_port)}"""


class Hub:
    def __init__(self, tmp: Path) -> None:
        ctx, self.ca = server_tls(tmp / "hub-tls")
        self.hub = AzureHub("testhub", tls=ctx)
        self.key = self.hub.add_device(DEVICE)
        (tmp / "device.key").write_text(self.key + "\n")
        self.bt = BrokerThread(self.hub)

    def reported(self) -> dict[str, Any]:
        doc = self.bt.call(self._reported())
        return doc  # type: ignore[no-any-return]

    async def _reported(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.hub.devices[DEVICE].reported.get("gatewayd", {})))

    def desire(self, patch: dict[str, Any]) -> None:
        self.bt.loop.call_soon_threadsafe(self.hub.update_desired, DEVICE, {"gatewayd": patch})

    def outcome(self, version: int, status: str, timeout: float = 30) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            state = self.reported()
            for c in [state.get("config") or {}, *reversed(state.get("config_recent") or [])]:
                if c.get("version") == version and c.get("status") == status:
                    return dict(c)
            return None

        return wait_for(find, timeout, f"reported outcome {status} for version {version}")  # type: ignore[no-any-return]

    def records(self, device: str) -> int:
        return sum(
            1 for r in list(self.hub.recorder.records) if r["point"].startswith(device + "/")
        )

    def flowing(self, device: str = "plc", n: int = 20, timeout: float = 20) -> None:
        start = self.records(device)
        wait_for(lambda: self.records(device) >= start + n, timeout, f"{n} records from {device}")


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    h = Hub(tmp_path)
    try:
        yield h
    finally:
        h.bt.stop()


def _outcome_lines(log: Path, status: str) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if f"event=config_{status} " in ln]


def test_azure_twin_config_rollback_and_direct_method_nothing_lost(
    hub: Hub, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    text = _config(tmp_path, hub.hub.port, hub.ca, port)
    cfg = write_config(tmp_path / "gw.toml", text)
    doc = tomllib.loads(text)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, procs, log)
    hub.flowing()
    assert set(hub.hub.content_types) == {"application/json"}
    wait_for(lambda: hub.reported().get("config_version") == 1, 20, "state in reported properties")

    # A whole document through the twin: applied live, its outcome in reported properties.
    new = json.loads(json.dumps(doc))
    new["version"] = 2
    new["devices"][0]["interval_ms"] = 200
    hub.desire(new)
    assert hub.outcome(2, "applied")["reason"].startswith("healthy after")
    wait_for(lambda: hub.reported().get("config_version") == 2, 20, "version 2 reported")

    # A reconnect GETs the twin again: the same document is no new outcome.
    applied = len(_outcome_lines(log, "applied"))
    gets = sum(1 for r in hub.hub.twin_requests if r.op == "get")
    hub.bt.loop.call_soon_threadsafe(hub.hub.drop_all)
    wait_for(
        lambda: sum(1 for r in hub.hub.twin_requests if r.op == "get" and r.status == 200) > gets,
        20,
        "the twin GET after the reconnect",
    )
    hub.flowing(n=10)
    assert len(_outcome_lines(log, "applied")) == applied

    # A PATCH carries only the change (merged onto the last document): an unreachable hub port
    # leaves the uplink down past the health deadline, so it is rolled back and reported.
    hub.desire({"version": 3, "uplink": {"port": free_port()}})
    out = hub.outcome(3, "rolled_back")
    assert "uplink not connected within 3 s" in out["reason"], out
    hub.flowing(n=10)

    # Direct methods: the same range-checked writes, answered with a status.
    status, body = hub.bt.call(
        hub.hub.invoke(DEVICE, "write", {"id": "m1", "point": "plc/setpoint", "value": 55.5}),
        timeout=30,
    )
    assert (status, body["status"], body["id"]) == (200, "ok", "m1"), body
    status, body = hub.bt.call(
        hub.hub.invoke(DEVICE, "write", {"point": "plc/setpoint", "value": 95}), timeout=30
    )
    assert status == 400 and "above max = 80.0" in body["reason"], body
    status, body = hub.bt.call(hub.hub.invoke(DEVICE, "ping"), timeout=30)
    assert (status, body["reason"]) == (200, "pong")
    status, body = hub.bt.call(hub.hub.invoke(DEVICE, "reboot"), timeout=30)
    assert status == 400 and "unknown command" in body["reason"]

    def setpoint_seen() -> bool:
        return any(
            r["point"] == "plc/setpoint" and r["value"] == pytest.approx(55.5)
            for r in list(hub.hub.recorder.records)
        )

    wait_for(setpoint_seen, 10, "the written setpoint read back from the device")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    ids = sorted(hub.hub.recorder.counts)
    assert ids == delivered_range(tmp_path / "buffer.sqlite"), "no reading lost"
    assert hub.hub.expired_disconnects == 0 and hub.hub.oversize == 0
