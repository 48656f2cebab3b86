"""Driver supervision in a real gateway process, with misbehaving plugin drivers.

The plugins (tests/fixtures/test_drivers) install through the `gatewayd.drivers` entry points by
PYTHONPATH, as a third-party package would; a real Modbus device (hw-sim) polls beside them.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from daemon_procs import plugin_device, scrape, start, try_scrape, with_metrics
from helpers import (
    Subscriber,
    free_port,
    gateway_toml,
    start_modbus_sim,
    wait_for,
    write_config,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"


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


class _StateWatcher:
    """The gateway's state documents as they arrive on the broker (the last one wins)."""

    def __init__(self, port: int, topic: str) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.docs: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"state-{id(self)}")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_message = lambda c, u, msg: self.docs.append(json.loads(msg.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_each_outage_is_one_device_down_event_and_qualities_ride_the_state_document(
    mosquitto: Any, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    points = "fail_threshold = 2\ntimeout_s = 0.2\n" + (FIXTURES / "plc_points.toml").read_text()
    toml = with_metrics(gateway_toml(tmp_path, mosquitto.port, device_port, points), metrics_port)
    cfg = write_config(tmp_path / "gw.toml", toml)
    events = Subscriber(mosquitto.port, "/devices/gw-test/events")
    state = _StateWatcher(mosquitto.port, "/devices/gw-test/state")
    log = tmp_path / "gw.log"
    try:
        sim = _modbus_sim(device_port, procs)
        gw = start(cfg, procs, log)

        def polls() -> float:
            s = try_scrape(metrics_port)
            return s.get("gatewayd_polls_total", device="plc") if s is not None else 0.0

        def plc_state() -> dict[str, Any] | None:
            return state.docs[-1].get("devices", {}).get("plc") if state.docs else None

        wait_for(lambda: (plc_state() or {}).get("good") == 7, 30, "plc up on the state doc")
        for _ in range(2):
            sim.send_signal(signal.SIGKILL)
            sim.wait(5)

            def down() -> dict[str, Any] | None:
                doc = plc_state()
                return doc if doc is not None and doc["status"] == "down" else None

            doc = wait_for(down, 20, "plc down on the state document")
            assert doc["cause"] == "connection refused"
            assert doc["good"] == 0
            assert sorted(doc["bad"]["disconnected"]) == sorted(
                ["i16", "u16", "i32", "f32", "f64", "counter", "running"]
            )
            screen = subprocess.run(
                [sys.executable, "-m", "gatewayd", "status", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            line = next(x for x in screen.splitlines() if x.startswith("  plc"))
            assert re.search(r"DOWN for [0-9.]+ s \(connection refused\)", line), line
            n = polls()
            wait_for(lambda n=n: polls() >= n + 20, 30, "20 polls while down")
            sim = _modbus_sim(device_port, procs)
            wait_for(lambda: (plc_state() or {}).get("status") == "up", 20, "plc up again")
        wait_for(lambda: len(_device_events(events)) == 4, 20, "the up event")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0, log.read_text()
    finally:
        events.close()
        state.close()

    got = _device_events(events)
    assert [(e["reason"], e["quality"], e["lane"]) for e in got] == [
        ("device_down", "bad", "event"),
        ("device_up", "good", "event"),
    ] * 2, "one device_down and one device_up per outage"
    assert [e["value"] for e in got[::2]] == ["connection refused"] * 2
    assert all(isinstance(e["value"], float | int) and e["value"] > 0 for e in got[1::2])
    # Bad readings only for the polls before the device was down: 2 per outage, 7 points each,
    # not one per point per poll for the 20+ polls it was down.
    bad = [r for r in events.records if r["point"].startswith("plc/") and r["quality"] == "bad"]
    assert len(bad) <= 2 * 2 * 7 + 7, len(bad)
    assert {r["reason"] for r in bad} == {"disconnected"}
    lines = [x for x in log.read_text().splitlines() if "device=plc" in x and "device_" in x]
    assert len(lines) <= 2 * 3, lines


def _device_events(sub: Subscriber) -> list[dict[str, Any]]:
    with sub.lock:
        return [r for r in sub.records if r.get("lane") == "event" and r["point"] == "plc"]


def _modbus_sim(port: int, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    return procs[-1]
