"""Driver supervision in a real gateway process, with misbehaving plugin drivers.

The plugins (tests/fixtures/test_drivers) install through the `gatewayd.drivers` entry points by
PYTHONPATH, as a third-party package would; a real Modbus device (hw-sim) polls beside them.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

from daemon_procs import plugin_device, scrape, start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config

FIXTURES = Path(__file__).parent / "fixtures"


def _stored(db: Path) -> list[dict[str, object]]:
    with sqlite3.connect(db) as c:
        return [json.loads(b) for (b,) in c.execute("SELECT body FROM records ORDER BY id")]


def test_raising_and_unbuildable_drivers_are_counted_restarted_and_never_fatal(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    # No broker on the uplink port: everything stays in the buffer, where the test reads it.
    toml = with_metrics(gateway_toml(tmp_path, free_port(), device_port, points), metrics_port)
    toml += plugin_device("raising", "test_raising")
    toml += plugin_device("flaky", "test_flaky")
    toml += plugin_device("broken", "test_broken")
    cfg = write_config(tmp_path / "gw.toml", toml)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, plugins=True)

    def restarted() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_driver_restarts_total", device="flaky") >= 3

    wait_for(restarted, 30, "the flaky driver rebuilt three times")
    first = scrape(metrics_port)
    wait_for(
        lambda: (
            scrape(metrics_port).get("gatewayd_polls_total", device="raising")
            >= first.get("gatewayd_polls_total", device="raising") + 10
        ),
        20,
        "the raising device still being polled",
    )
    s = scrape(metrics_port)
    assert gw.poll() is None, log.read_text()
    assert s.get("gatewayd_driver_crashes_total", device="raising") >= 2
    assert s.get("gatewayd_driver_crashes_total", device="flaky") >= 3
    assert s.get("gatewayd_driver_crashes_total", device="broken") >= 2
    assert s.get("gatewayd_driver_restarts_total", device="broken") == 0
    # A failed poll is a failure of the device's polls, visible per device.
    assert s.get("gatewayd_poll_failures_total", device="raising") == s.get(
        "gatewayd_polls_total", device="raising"
    )
    # The healthy Modbus device is untouched by its neighbours.
    assert s.get("gatewayd_polls_total", device="plc") >= 20
    assert s.get("gatewayd_poll_failures_total", device="plc") == 0
    assert s.get("gatewayd_driver_crashes_total", device="plc") == 0

    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    records = _stored(tmp_path / "buffer.sqlite")
    by_device: dict[str, list[dict[str, object]]] = {}
    for r in records:
        by_device.setdefault(str(r["point"]).split("/")[0], []).append(r)
    # A broken driver's points arrive as BAD readings with a reason, so the cloud sees the outage.
    for dev in ("raising", "broken"):
        assert by_device[dev], dev
        assert {(r["quality"], r.get("reason")) for r in by_device[dev]} == {
            ("bad", "driver_error")
        }
    assert {r["value"] for r in by_device["flaky"] if r["quality"] == "good"} == {1}
    assert all(r["quality"] == "good" for r in by_device["plc"])

    lines = log.read_text().splitlines()
    crash_warnings = [
        line
        for line in lines
        if "level=warning " in line and "event=driver_crashed device=raising" in line
    ]
    # First failure at WARNING with the exception on the same line; repeats stay quiet.
    assert len(crash_warnings) == 1, crash_warnings
    assert 'exc="RuntimeError: bug in poll"' in crash_warnings[0]
    assert any("event=driver_start_failed device=broken" in line for line in lines)
    assert not any(line.startswith(("Traceback", "  File")) for line in lines)


def test_slow_device_never_runs_two_polls_of_a_group_at_once(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    metrics_port = free_port()
    toml = with_metrics(gateway_toml(tmp_path, free_port(), free_port(), ""), metrics_port)
    # gateway_toml always declares a Modbus device; with no points it polls nothing.
    toml += plugin_device("slow", "test_slow", interval_ms=100, points=1)
    cfg = write_config(tmp_path / "gw.toml", toml)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log, plugins=True)

    def polled_enough() -> bool:
        s = try_scrape(metrics_port)
        return s is not None and s.get("gatewayd_polls_total", device="slow") >= 8

    wait_for(polled_enough, 30, "eight polls of the slow device")
    s = scrape(metrics_port)
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()

    # Each value is the most polls of the group the driver saw running at once.
    values = [r["value"] for r in _stored(tmp_path / "buffer.sqlite")]
    assert len(values) >= 8
    assert set(values) == {1}
    # The runs that came due while a poll was running were skipped and counted, not queued.
    assert s.get("gatewayd_polls_skipped_total", device="slow", group="slow@100ms") >= 5
    assert sum(1 for line in log.read_text().splitlines() if "event=poll_skipped" in line) <= 2
