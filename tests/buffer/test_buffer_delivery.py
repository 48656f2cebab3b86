"""A damaged backlog through a real gateway process to a real broker (mosquitto).

The buffer file of a gateway that was down is damaged on disk before it starts: one 4 KiB page
smashed, one byte of one body made invalid UTF-8, one body made invalid JSON. The gateway must
deliver every other record, in payloads that all parse, and account for the rest in its metrics
and its state document: appended == delivered + counted corrupt + counted damaged.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from daemon_procs import scrape, start, try_scrape, with_metrics
from helpers import free_port, gateway_toml, start_modbus_sim, wait_for, write_config
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.buffer import Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record

FIXTURES = Path(__file__).parent.parent / "fixtures"


class Raw:
    """Every payload on the gateway's topics, kept as bytes: the test parses them itself."""

    def __init__(self, port: int) -> None:
        self.payloads: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("/devices/gw-test/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.payloads.append((msg.topic, msg.payload))

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self.lock:
            for topic, p in self.payloads:
                if topic.startswith("/devices/gw-test/events"):
                    out.extend(json.loads(p))  # raises if a payload does not parse
        return out

    def last_state(self) -> dict[str, Any] | None:
        with self.lock:
            states = [p for t, p in self.payloads if t == "/devices/gw-test/state"]
        return json.loads(states[-1]) if states else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_damaged_backlog_delivers_the_rest_and_counts_every_record(
    mosquitto, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    db = tmp_path / "buffer.sqlite"
    store = Store(db, BufferConfig())
    appended: list[int] = []
    for k in range(10):  # 10,000 records left by an outage
        appended += store.append(
            [Record(f"old/p{k:02d}{i:04d}", 1_760_000_000_000 + i, float(i)) for i in range(950)]
        )
        appended += store.append(
            [
                Record(f"old/a{k:02d}{i:04d}", 1_760_000_000_000, 1, lane=Lane.ALARM)
                for i in range(50)
            ]
        )
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute(
            "UPDATE records SET body = replace(body, '\"ts\":', '\"ts\"') WHERE id = ?",
            (appended[4321],),
        )
    data = db.read_bytes()
    at = data.index(b'"old/p070123"')
    with open(db, "r+b") as f:
        f.seek(at + 5)
        f.write(b"\xfe")  # one invalid UTF-8 byte in one body
        f.seek(len(data) // 4096 // 3 * 4096)
        f.write(random.Random(3).randbytes(4096))  # one unreadable page

    device_port, metrics_port = free_port(), free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    sub = Raw(mosquitto.port)
    points = (FIXTURES / "plc_points.toml").read_text()
    toml = with_metrics(gateway_toml(tmp_path, mosquitto.port, device_port, points), metrics_port)
    cfg = write_config(tmp_path / "gw.toml", toml)
    log = tmp_path / "gw.log"
    gw = start(cfg, procs, log)
    old = set(appended)

    def accounted() -> bool:
        s = try_scrape(metrics_port)
        if s is None:
            return False
        counted = sum(v for lab, v in s.series("gatewayd_buffer_evicted_records_total"))
        got = {r["id"] for r in sub.records()} & old
        return len(got) + counted == len(old)

    wait_for(accounted, 60, "every old record delivered or counted")
    s = scrape(metrics_port)
    got = {r["id"] for r in sub.records()} & old
    corrupt = sum(
        v
        for lab, v in s.series("gatewayd_buffer_evicted_records_total")
        if lab["reason"] == "corrupt"
    )
    damaged = s.get("gatewayd_buffer_evicted_records_total", lane="telemetry", reason="damaged")
    assert damaged == 2, "the invalid UTF-8 body and the invalid JSON body"
    assert appended[4321] not in got
    assert s.get("gatewayd_buffer_quarantined_files_total") == 1
    assert s.get("gatewayd_buffer_salvaged_records_total") == len(old) - corrupt
    assert len(got) + corrupt + damaged == len(old) == 10_000
    assert len(got) >= 9_500, f"one page cost {len(old) - len(got)} records"

    def state_has_counts() -> bool:
        st = sub.last_state()
        return st is not None and st.get("buffer_evicted", {}).get("telemetry/damaged") == 2

    wait_for(state_has_counts, 20, "the counts in the state document")
    st = sub.last_state()
    assert st is not None and st["buffer_quarantined_files"] == 1
    assert sum(n for k, n in st["buffer_evicted"].items() if k.endswith("/corrupt")) == corrupt
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(15) == 0, log.read_text()
    sub.close()
