"""OPC UA end to end: asyncua's server in its own process, a real gateway process, mosquitto.

Values reach the broker with the server's SourceTimestamps, a bad status code arrives as a bad
reading named after the code, and a server SIGKILLed and restarted costs no stored reading.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("asyncua")

from helpers import (
    Subscriber,
    buffer_ids,
    delivered_range,
    free_port,
    gateway_toml,
    start_gateway,
    wait_for,
    wait_port,
    write_config,
)

TOPIC = "/devices/gw-test/events"
HOUR_MS = 3600_000


def start_sim(port: int, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatewayd_sim",
            "opcua",
            "--port",
            str(port),
            "--period-ms",
            "100",
            "--ts-offset-s",
            "-3600",
            "--bad",
            "Counter=BadSensorFailure",
        ],
        stdout=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_port(port, 30)
    return p


def opcua_device(port: int) -> str:
    return f"""
[[devices]]
id = "ua"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/sim"
security_policy = "None"
publishing_interval_ms = 100
interval_ms = 200
backoff_base_s = 0.2
backoff_cap_s = 1.0
[[devices.points]]
id = "temp"
node = "ns=2;s=Plant.Temperature"
sampling_interval_ms = 100
[[devices.points]]
id = "counter"
browse_path = "0:Objects/2:Plant/2:Counter"
[[devices.points]]
id = "name"
node = "ns=2;s=Plant.Name"
mode = "poll"
"""


def test_opcua_values_reach_the_broker_with_server_timestamps_across_a_server_restart(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    ua_port = free_port()
    sim = start_sim(ua_port, procs)
    sub = Subscriber(mosquitto.port, TOPIC)
    # gateway_toml always declares a Modbus device; with no points it polls nothing.
    toml = gateway_toml(tmp_path, mosquitto.port, free_port(), "") + opcua_device(ua_port)
    cfg = write_config(tmp_path / "gw.toml", toml)
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")

    def temps() -> list[dict[str, object]]:
        with sub.lock:
            return [r for r in sub.records if r["point"] == "ua/temp" and r["quality"] == "good"]

    wait_for(lambda: len(temps()) >= 10, 60, "ten temperatures at the broker")
    # The server stamps an hour back: what arrives carries its SourceTimestamp, not ours.
    now_ms = time.time() * 1000
    assert all(abs(int(r["ts"]) - (now_ms - HOUR_MS)) < 120_000 for r in temps()), temps()[:2]
    with sub.lock:
        counters = [r for r in sub.records if r["point"] == "ua/counter"]
        names = [r for r in sub.records if r["point"] == "ua/name"]
    assert counters and all(
        (r["quality"], r.get("reason")) == ("bad", "BadSensorFailure") for r in counters
    ), counters[:2]
    assert names and names[-1]["value"] == "boiler-1"

    sim.send_signal(signal.SIGKILL)
    sim.wait(10)
    wait_for(
        lambda: any(r["point"] == "ua/name" and r["quality"] == "bad" for r in sub.records),
        60,
        "a bad reading while the server is down",
    )
    before = len(temps())
    start_sim(ua_port, procs)
    wait_for(lambda: len(temps()) >= before + 10, 60, "temperatures again after the restart")

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, (tmp_path / "gw.log").read_text()[-3000:]
    db = tmp_path / "buffer.sqlite"
    ids = sub.ids()
    sub.close()
    assert buffer_ids(db) == [], "acked records are deleted from the buffer"
    assert sorted(set(ids)) == delivered_range(db), "every stored record arrived"
    log = (tmp_path / "gw.log").read_text()
    outage = [ln for ln in log.splitlines() if "opcua_unavailable" in ln and "level=warning" in ln]
    assert len(outage) == 1, outage  # one WARNING for the outage, its retries at DEBUG
    assert "Traceback" not in log, log[-3000:]
