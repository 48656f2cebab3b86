"""SIGTERM in the middle of a busy publish: exit 0 within 5 s, and no record lost.

Every id the buffer handed out is accounted for by id: either the subscriber has it, or it is
still in the buffer file and the next start delivers it.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from daemon_procs import start, try_scrape, with_metrics
from helpers import (
    Subscriber,
    buffer_ids,
    free_port,
    gateway_toml,
    start_modbus_sim,
    wait_for,
    write_config,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
TOPIC = "/devices/gw-test/events"


def _all_ids(db: Path) -> set[int]:
    """Every id this buffer file ever handed out."""
    with sqlite3.connect(db) as c:
        (seq,) = c.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    base = int((db.parent / (db.name + ".incarnation")).read_text()) << 40
    return set(range(base + 1, seq + 1))


def _depth(db: Path) -> int:
    try:
        return len(buffer_ids(db)) if db.exists() else 0
    except sqlite3.OperationalError:  # the gateway is still creating the schema
        return 0


def _stop_seconds(log: Path) -> float:
    m = re.findall(r"event=gateway_stopped seconds=([0-9.]+)", log.read_text())
    assert m, log.read_text()
    return float(m[-1])


def test_sigterm_during_busy_publish_exits_0_in_5_s_and_loses_nothing(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    points = (FIXTURES / "plc_points.toml").read_text()
    # Small messages: a backlog drains as hundreds of QoS 1 messages in flight.
    toml = gateway_toml(
        tmp_path,
        mosquitto.port,
        device_port,
        points,
        interval_ms=10,
        # One record per message and no pacing: many PUBACKs in flight when SIGTERM lands.
        extra_uplink="batch_max_records = 1\ninflight_window = 100\nmax_messages_per_s = 10000",
    )
    cfg = write_config(tmp_path / "gw.toml", with_metrics(toml, metrics_port))
    db = tmp_path / "buffer.sqlite"

    # 1. Broker down: a backlog builds up; SIGTERM with the uplink offline.
    mosquitto.stop()
    gw = start(cfg, procs, tmp_path / "gw1.log")
    wait_for(lambda: _depth(db) >= 1500, 30, "a backlog of 1500")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, (tmp_path / "gw1.log").read_text()
    offline_stop = _stop_seconds(tmp_path / "gw1.log")

    # 2. Broker up, the backlog draining: SIGTERM in the middle of it.
    mosquitto.start()
    sub = Subscriber(mosquitto.port, TOPIC)
    log = tmp_path / "gw2.log"
    gw = start(cfg, procs, log)
    wait_for(lambda: len(sub.ids()) >= 300, 30, "300 records at the subscriber")
    s = try_scrape(metrics_port)
    t0 = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    exit_s = time.monotonic() - t0
    busy_stop = _stop_seconds(log)
    handed_out = _all_ids(db)
    left = set(buffer_ids(db))
    in_flight = (
        s.get("gatewayd_published_records_total") - s.get("gatewayd_acked_records_total")
        if s is not None
        else float("nan")
    )
    print(
        f"\nSIGTERM while offline: stop {offline_stop:.2f} s; while draining: process exit "
        f"{exit_s:.2f} s, stop sequence {busy_stop:.2f} s; {in_flight:.0f} records unacked at "
        f"the last scrape, {len(left)} of {len(handed_out)} left in the buffer"
    )
    assert offline_stop <= 5.0 and busy_stop <= 5.0
    # A record leaves the buffer only after its PUBACK, so the subscriber gets it (mosquitto may
    # still be forwarding the last ones).
    wait_for(lambda: handed_out - left <= set(sub.ids()), 10, "every deleted record at the broker")

    # 3. The rest is delivered by the next start (polling slowly, so the backlog drains).
    slow = write_config(
        tmp_path / "gw3.toml", cfg.read_text().replace("interval_ms = 10", "interval_ms = 1000")
    )
    start(slow, procs, tmp_path / "gw3.log")
    wait_for(lambda: handed_out <= set(sub.ids()), 30, "every record ever stored delivered")
    sub.close()
