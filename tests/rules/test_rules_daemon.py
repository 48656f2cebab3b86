"""The daemon runs the configured rules between a simulated PLC and the real SQLite buffer."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

from helpers import free_port, gateway_toml, start_gateway, start_modbus_sim, wait_for, write_config

FIXTURES = Path(__file__).parent.parent / "fixtures"

POINTS = """
[[devices.points]]
id = "i16"
table = "holding"
address = 0
type = "int16"
scale = 0.1
[[devices.points]]
id = "u16"
table = "holding"
address = 1
type = "uint16"
[[devices.points]]
id = "f32"
table = "holding"
address = 4
type = "float32"
[[devices.points]]
id = "f64"
table = "holding"
address = 6
type = "float64"
order = "DCBA"
[[devices.points]]
id = "counter"
table = "holding"
address = 10
type = "uint16"
interval_ms = 30000           # polled once in this test: only the clock can close its window

[[rules]]
name = "constant"
points = ["plc/i16"]
[[rules.steps]]
kind = "deadband"
absolute = 0

[[rules]]
name = "u16_high"
points = ["plc/u16"]
[[rules.steps]]
kind = "alarm"
high = 50000
severity = "critical"

[[rules]]
name = "not_wanted"
points = ["plc/f32"]
[[rules.steps]]
kind = "route"
drop = true

[[rules]]
name = "counter_seconds"
points = ["plc/counter"]
[[rules.steps]]
kind = "window"
seconds = 1
emit = ["count", "last"]
grace_s = 0.2
"""


def stored(db: Path) -> list[dict[str, Any]]:
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
            rows = c.execute("SELECT lane, body FROM records ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not created yet, or its table not yet
        return []
    return [{**json.loads(body), "lane_column": lane} for lane, body in rows]


def test_gateway_applies_rules_before_the_buffer_and_closes_windows_by_the_clock(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    device_port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    # No broker listens on this port: everything the rules keep stays in the buffer.
    cfg = write_config(
        tmp_path / "gw.toml", gateway_toml(tmp_path, free_port(), device_port, POINTS)
    )
    db = tmp_path / "buffer.sqlite"
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")

    def polled_enough() -> bool:
        recs = stored(db)
        return sum(r["point"] == "plc/f64" for r in recs) >= 10 and any(
            r["point"] == "plc/counter/count" for r in recs
        )

    wait_for(polled_enough, 25, "10 polls and the counter's window closed by the clock")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0, (tmp_path / "gw.log").read_text()

    recs = stored(db)
    by_point: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_point.setdefault(r["point"], []).append(r)
    assert [r["value"] for r in by_point["plc/i16"]] == [-123.4], "a constant passes once"
    alarms = [r for r in recs if r["lane_column"] == 0]
    assert [(r["point"], r["value"], r["reason"]) for r in alarms] == [
        ("plc/u16", 54321, "raise:u16_high.high:critical")
    ]
    assert alarms[0]["lane"] == "alarm"
    assert len(by_point["plc/u16"]) == 1 + len(by_point["plc/f64"]), "readings pass the alarm"
    assert "plc/f32" not in by_point, "dropped by its route"
    assert "plc/counter" not in by_point, "consumed by the window"
    assert [r["value"] for r in by_point["plc/counter/count"]] == [1]
    assert by_point["plc/counter/count"][0]["ts"] % 1000 == 0, "a window starts on a second"
