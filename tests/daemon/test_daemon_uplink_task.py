"""A crashing uplink task is restarted, not fatal: polling and buffering go on meanwhile."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from daemon_procs import scrape, start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.uplink.device_jwt import generate_key

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_missing_device_key_restarts_uplink_while_buffering_then_delivers(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    auth = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
    toml = gateway_toml(tmp_path, mosquitto.port, device_port, points, auth=auth)
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log)

    def restarted() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_task_restarts_total", task="uplink") >= 2

    wait_for(restarted, 20, "the uplink task restarted twice")
    s = scrape(metrics_port)
    assert s.get("gatewayd_buffered_records_total") > 0
    assert s.get("gatewayd_acked_records_total") == 0
    assert gw.poll() is None

    generate_key(tmp_path / "device.key", "ES256")
    wait_for(
        lambda: scrape(metrics_port).get("gatewayd_acked_records_total") > 0,
        30,
        "records delivered once the key exists",
    )
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    text = log.read_text()
    crashed = [line for line in text.splitlines() if "event=task_crashed task=uplink" in line]
    assert len(crashed) == 1, "first crash at ERROR, repeats at DEBUG"
    assert "level=error " in crashed[0] and "device.key" in crashed[0]
