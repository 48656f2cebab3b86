"""`gatewayd status` against a running daemon: one screen, from the metrics endpoint."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from daemon_procs import plugin_device, start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

from gatewayd.status import parse, render

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_status_shows_uplink_devices_buffer_and_config_of_the_running_daemon(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    toml = with_metrics(gateway_toml(tmp_path, mosquitto.port, device_port, points), metrics_port)
    toml += plugin_device("broken", "test_broken", interval_ms=200, points=3)
    cfg = write_config(tmp_path / "gw.toml", toml)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, plugins=True)

    def delivering() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_acked_records_total") > 0

    wait_for(delivering, 20, "records acked")
    r = _status("--config", str(cfg))
    assert r.returncode == 0, r.stderr
    print("\n" + r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) <= 24, "one screen"
    assert re.match(r"gatewayd \S+, up [0-9.]+ s, config version 1$", lines[0]), lines[0]
    assert re.match(r"uplink +connected; published \d+, acked [1-9]\d*, reconnects 0$", lines[1])
    # "room for ... at this rate" follows once the fill rate is measurable (buffer_hours_left).
    assert re.match(
        r"buffer +\d+ records, .*; evicted none(; room for .+ at this rate)?$", lines[2]
    ), lines[2]
    dev = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert set(dev) == {"plc", "broken"}
    assert re.search(r"last poll [0-9.]+ s ago, 7 good, 0 bad; polls [1-9]", dev["plc"]), dev["plc"]
    assert "0 good, 3 bad (driver_error)" in dev["broken"], dev["broken"]
    assert re.search(r"\(([1-9]\d*) failed, 0 skipped\), crashes [1-9]", dev["broken"])

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    r = _status("--listen", f"127.0.0.1:{metrics_port}")
    assert r.returncode == 1
    assert f"no gatewayd answers on 127.0.0.1:{metrics_port}" in r.stderr


def test_status_says_when_the_uplink_is_offline_and_why() -> None:
    text = (
        "gatewayd_uplink_connected 0\n"
        'gatewayd_uplink_last_error{reason="connection refused"} 1\n'
        "gatewayd_buffer_depth 1200\n"
        "gatewayd_buffer_bytes 2097152\n"
        "gatewayd_buffer_oldest_age_seconds 5400\n"
        'gatewayd_buffer_evicted_records_total{lane="telemetry",reason="full"} 17\n'
        "gatewayd_clock_plausible 0\n"
    )
    screen = render(parse(text), now=0).splitlines()
    assert screen[0].endswith("CLOCK NOT SET (uplink held)")
    assert screen[1].startswith("uplink   OFFLINE (connection refused)")
    assert screen[2] == "buffer   1200 records, 2.0 MiB, oldest 1.5 h; evicted telemetry/full 17"


def test_status_shows_a_down_device_with_its_cause_not_a_reason_code() -> None:
    text = (
        'gatewayd_polls_total{device="plc"} 120\n'
        'gatewayd_poll_failures_total{device="plc"} 3\n'
        'gatewayd_device_last_poll_timestamp_seconds{device="plc"} 99.9\n'
        'gatewayd_device_last_poll_good{device="plc"} 0\n'
        'gatewayd_device_last_poll_bad{device="plc"} 0\n'
        'gatewayd_device_down_since_timestamp_seconds{cause="connection refused",device="plc"} 88\n'
        'gatewayd_polls_total{device="boiler"} 120\n'
        'gatewayd_device_last_poll_timestamp_seconds{device="boiler"} 99.9\n'
        'gatewayd_device_last_poll_good{device="boiler"} 7\n'
    )
    screen = render(parse(text), now=100).splitlines()
    plc = next(line for line in screen if line.startswith("  plc"))
    boiler = next(line for line in screen if line.startswith("  boiler"))
    assert "DOWN for 12.0 s (connection refused)" in plc, plc
    assert "backoff" not in plc
    assert "7 good, 0 bad;" in boiler, boiler
