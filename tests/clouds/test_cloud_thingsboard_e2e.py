"""The gateway under `profile = "thingsboard"`, end to end: real processes and sockets.

gatewayd (a process, reading a Modbus simulator process) -> the ThingsBoard stand-in
(hw-sim/cloud/thingsboard.py) with an access token: readings counted by their `_id` against the
buffer's delivered range; a configuration pushed as the shared attribute `gatewayd` applied live
and its outcome read from the gateway's client attributes; a reconnect's attributes request not
counted as a new outcome; a rollback reported there; RPC writes to the field device and to the
gateway executed on the simulator and answered; `v1/gateway/connect|disconnect` following the
simulator killed and started again.
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
from test_cloud_azure_e2e import FIXTURES, _outcome_lines, plc_device

from gatewayd_sim.cloud.thingsboard import ThingsBoard

GATEWAY, TOKEN = "gw-test", "GW_E2E_TOKEN"


def _config(tmp: Path, tb_port: int, device_port: int) -> str:
    return f"""
version = 1
[gateway]
id = "gw-test"
state_dir = "{tmp}"
[uplink]
profile = "thingsboard"
host = "127.0.0.1"
port = {tb_port}
device = "{GATEWAY}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
[uplink.tls]
enabled = false
[uplink.auth]
access_token_file = "tb.token"
{plc_device(device_port)}"""


class TB:
    def __init__(self, tmp: Path) -> None:
        self.cloud = ThingsBoard()
        self.cloud.add_device(GATEWAY, TOKEN, gateway=True)
        (tmp / "tb.token").write_text(TOKEN + "\n")
        self.bt = BrokerThread(self.cloud)

    def _on_loop(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        return self.bt.call(run(), timeout=30)

    def client_attributes(self) -> dict[str, Any]:
        doc = self._on_loop(lambda: json.dumps(self.cloud.devices[GATEWAY].client))
        return json.loads(doc)  # type: ignore[no-any-return]

    def share(self, doc: dict[str, Any]) -> None:
        self._on_loop(lambda: self.cloud.set_shared(GATEWAY, {"gatewayd": doc}))

    def rpc(self, device: str, method: str, params: Any, timeout: float = 30) -> Any:
        rid = self._on_loop(lambda: self.cloud.send_rpc(device, method, params))

        def answer() -> Any:
            return self._on_loop(lambda: self.cloud.rpc_replies.get((device, rid)))

        return wait_for(answer, timeout, f"the answer to RPC {rid} ({method} to {device})")

    def events(self) -> list[tuple[str, str]]:
        return self._on_loop(lambda: [(op, dev) for _gw, op, dev in self.cloud.events])  # type: ignore[no-any-return]

    def outcome(self, version: int, status: str, timeout: float = 30) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            state = self.client_attributes()
            for c in [state.get("config") or {}, *reversed(state.get("config_recent") or [])]:
                if c.get("version") == version and c.get("status") == status:
                    return dict(c)
            return None

        return wait_for(find, timeout, f"client attribute outcome {status} for version {version}")  # type: ignore[no-any-return]

    def records(self, device: str) -> int:
        recs = self._on_loop(lambda: list(self.cloud.recorder.records))
        return sum(1 for r in recs if r["point"].startswith(device + "/"))

    def flowing(self, device: str = "plc", n: int = 20, timeout: float = 20) -> None:
        start = self.records(device)
        wait_for(lambda: self.records(device) >= start + n, timeout, f"{n} records from {device}")


@pytest.fixture
def tb(tmp_path: Path) -> Any:
    t = TB(tmp_path)
    try:
        yield t
    finally:
        t.bt.stop()


def test_thingsboard_attributes_config_rollback_rpc_and_device_connect_nothing_lost(
    tb: TB, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    sim = procs[-1]
    text = _config(tmp_path, tb.cloud.port, port)
    cfg = write_config(tmp_path / "gw.toml", text)
    doc = tomllib.loads(text)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, procs, log)
    tb.flowing()
    wait_for(lambda: ("connect", "plc") in tb.events(), 20, "v1/gateway/connect for plc")
    wait_for(
        lambda: tb.client_attributes().get("config_version") == 1, 20, "state as client attributes"
    )
    assert tb.cloud.recorder.malformed == 0

    # A whole document as the shared attribute: applied live, its outcome in client attributes.
    new = json.loads(json.dumps(doc))
    new["version"] = 2
    new["devices"][0]["interval_ms"] = 200
    tb.share(new)
    assert tb.outcome(2, "applied")["reason"].startswith("healthy after")
    wait_for(lambda: tb.client_attributes().get("config_version") == 2, 20, "version 2 reported")

    # A reconnect asks for the attribute again: the same document is no new outcome.
    applied = len(_outcome_lines(log, "applied"))
    connects = tb.events().count(("connect", "plc"))
    tb.bt.loop.call_soon_threadsafe(tb.cloud.drop_all)
    wait_for(lambda: tb.events().count(("connect", "plc")) > connects, 20, "plc announced again")
    tb.flowing(n=10)
    assert len(_outcome_lines(log, "applied")) == applied

    # An unreachable port leaves the uplink down past the health deadline: rolled back, reported.
    bad = json.loads(json.dumps(new))
    bad["version"] = 3
    bad["uplink"]["port"] = free_port()
    tb.share(bad)
    out = tb.outcome(3, "rolled_back")
    assert "uplink not connected within 3 s" in out["reason"], out
    tb.flowing(n=10)

    # Server-side RPC, to the field device and to the gateway: the same range-checked writes.
    body = tb.rpc("plc", "write", {"point": "setpoint", "value": 55.5})
    assert body["status"] == "ok", body
    body = tb.rpc(GATEWAY, "write", {"point": "plc/setpoint", "value": 95})
    assert body["status"] == "refused" and "above max = 80.0" in body["reason"], body
    assert tb.rpc(GATEWAY, "ping", {})["reason"] == "pong"
    assert "unknown command" in tb.rpc("plc", "reboot", None)["reason"]

    def setpoint_seen() -> bool:
        recs = tb._on_loop(lambda: list(tb.cloud.recorder.records))
        return any(r["point"] == "plc/setpoint" and r["value"] == pytest.approx(55.5) for r in recs)

    wait_for(setpoint_seen, 10, "the written setpoint read back from the device")

    # The device goes away and comes back: disconnect, then connect, through the gateway API.
    sim.send_signal(signal.SIGKILL)
    sim.wait(10)
    wait_for(lambda: tb.events()[-1] == ("disconnect", "plc"), 30, "v1/gateway/disconnect")
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    wait_for(lambda: tb.events()[-1] == ("connect", "plc"), 30, "v1/gateway/connect again")
    tb.flowing(n=10)

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    ids = sorted(tb.cloud.recorder.counts)
    assert ids == delivered_range(tmp_path / "buffer.sqlite"), "no reading lost"
    assert tb.cloud.recorder.malformed == 0 and tb.cloud.oversize == 0
    keys = {r["point"] for r in tb.cloud.recorder.records}
    assert {"plc/device_down", "plc/device_up"} <= keys  # the outage's events, by id too


def test_field_device_names_follow_the_template_so_gateways_do_not_share_a_device(
    tb: TB, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """ThingsBoard names devices per tenant: two gateways that each had a "plc" wrote into one
    ThingsBoard device, their readings mixed. `field_device_name` tells them apart, in the
    telemetry, in connect and disconnect, and an RPC to the name reaches the field device."""
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    text = _config(tmp_path, tb.cloud.port, port)
    text = text.replace(
        f'device = "{GATEWAY}"\n',
        f'device = "{GATEWAY}"\nfield_device_name = "{{gateway}}-{{field_device}}"\n',
        1,
    )
    assert "field_device_name" in text
    start_gateway(write_config(tmp_path / "gw.toml", text), procs, tmp_path / "gw.log")
    name = f"{GATEWAY}-plc"
    tb.flowing(name)
    assert tb.records("plc") == 0, "no record under the bare device id"
    wait_for(lambda: ("connect", name) in tb.events(), 20, f"v1/gateway/connect for {name}")
    assert ("connect", "plc") not in tb.events()
    body = tb.rpc(name, "write", {"point": "setpoint", "value": 44.5})
    assert (body["status"], body["reason"]) == ("ok", "wrote 44.5 to plc/setpoint"), body


def test_field_device_name_is_checked_with_the_place_and_fix() -> None:
    from gatewayd.config import ConfigError, load

    base = '[uplink]\nprofile = "{p}"\nhost = "h"\ndevice = "gw"\n{x}\n[uplink.auth]\n{a}\n'
    tb_auth, none = 'access_token = "t"', 'kind = "none"'
    ok = load(
        base.format(p="thingsboard", x='field_device_name = "{gateway}.{field_device}"', a=tb_auth)
    )
    assert ok.uplink.field_device_name == "{gateway}.{field_device}"
    for p, x, a, message in [
        ("thingsboard", 'field_device_name = "{gateway}"', tb_auth, "has no {field_device}"),
        (
            "thingsboard",
            'field_device_name = "{device}-{field_device}"',
            tb_auth,
            "unknown placeholder {device}",
        ),
        (
            "mqtt",
            'field_device_name = "{field_device}"',
            none,
            "names field devices in ThingsBoard only",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            load(base.format(p=p, x=x, a=a))
        assert str(err.value).startswith("uplink.field_device_name"), str(err.value)
        assert message in str(err.value), str(err.value)
