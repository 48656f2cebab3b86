"""A push the broker acknowledged and never delivered is sent again, with a real gateway.

NATS 2.9 did this now and then (bench/fleet.py, 2026-12-01: gw-26 of 50 never heard version 2
of a good rollout, and the rollout halted on its timeout). The embedded broker plays it: it
acknowledges and retains the first push, and routes it to no one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from helpers import (
    BrokerThread,
    free_port,
    gateway_toml,
    start_gateway,
    start_modbus_sim,
    write_config,
)

from gatewayd_sim.cloud import Broker

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_a_push_acknowledged_but_never_delivered_is_sent_again(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    broker = Broker()
    swallowed: list[str] = []

    def forward(s: Any, topic: str) -> bool:
        if topic.endswith("/config") and not swallowed:
            swallowed.append(topic)
            return False  # acknowledged and retained, routed to nobody
        return True

    broker.forward = forward  # type: ignore[method-assign]
    bt = BrokerThread(broker)
    try:
        device_port = free_port()
        start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
        points = (FIXTURES / "plc_points.toml").read_text()
        (tmp_path / "state").mkdir()
        toml = gateway_toml(tmp_path / "state", broker.port, device_port, points, 500)
        start_gateway(write_config(tmp_path / "gw.toml", toml), procs, tmp_path / "gw.log")
        doc = tomllib.loads(toml)
        doc["version"] = 2
        (tmp_path / "v2.json").write_text(json.dumps(doc))
        r = subprocess.run(
            [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(tmp_path / "v2.json"),
             "--host", f"127.0.0.1:{broker.port}", "--waves", "1", "--health-timeout", "90"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
        print(r.stdout, r.stderr)
        assert swallowed == ["/devices/gw-test/config"], "the first push went nowhere"
        assert r.returncode == 0, r.stdout + r.stderr
        assert "gw-test: no trace of the rollout of version 2 in its state" in r.stdout
        assert "sent again (#1)" in r.stdout
        assert "1 applied, 0 failed" in r.stdout
    finally:
        bt.stop()
