"""Helpers for tests with real processes and sockets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd_sim.procs import Mosquitto, free_port, wait_for, wait_port

__all__ = ["Mosquitto", "free_port", "wait_for", "wait_port"]


class Subscriber:
    """A paho subscriber that collects the records published on a topic, by id."""

    def __init__(self, port: int, topic: str, host: str = "127.0.0.1", **auth: str) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sub-{os.getpid()}-{id(self)}"
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("subscriber did not get a SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.records.extend(json.loads(msg.payload))

    def ids(self) -> list[int]:
        with self.lock:
            return [r["id"] for r in self.records]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def start_gateway(
    config: Path, procs: list[subprocess.Popen[bytes]], log: Path
) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115
    p = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "run", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    procs.append(p)
    return p


def start_modbus_sim(map_file: Path, port: int, procs: list[subprocess.Popen[bytes]]) -> None:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatewayd_sim",
            "modbus",
            "--map",
            str(map_file),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_port(port)


def buffer_ids(db: Path) -> list[int]:
    """Ids in a buffer file; [] while the daemon has not created its table yet."""
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return [r[0] for r in c.execute("SELECT id FROM records ORDER BY id")]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


def gateway_toml(
    state_dir: Path,
    broker_port: int,
    device_port: int,
    points: str,
    interval_ms: int = 100,
    auth: str = 'kind = "none"',
    extra_uplink: str = "",
    tail: str = "",
) -> str:
    return f"""
version = 1
[gateway]
id = "gw-test"
state_dir = "{state_dir}"
[uplink]
host = "127.0.0.1"
port = {broker_port}
project = "p1"
region = "r1"
registry = "reg1"
device = "gw-test"
backoff_base_s = 0.2
backoff_cap_s = 1.0
{extra_uplink}
[uplink.tls]
enabled = false
[uplink.auth]
{auth}
[[devices]]
id = "plc"
driver = "modbus_tcp"
port = {device_port}
interval_ms = {interval_ms}
{points}
{tail}
"""


class BrokerThread:
    """The embedded cloud stand-in, run on its own event loop in a thread."""

    def __init__(self, broker: Any) -> None:
        import asyncio

        self.broker = broker
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(broker.start())

    @property
    def port(self) -> int:
        return int(self.broker.port)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.broker.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def connack_code(port: int, client_id: str, password: str) -> int:
    """Connect once with paho and return the CONNACK reason code's value (0 = accepted)."""
    result: list[int] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set("unused", password)

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        result.append(rc.value)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(10)
    c.loop_stop()
    c.disconnect()
    return result[0]


def delivered_range(db: Path) -> list[int]:
    """Every id this buffer file ever handed out, first to last."""
    with sqlite3.connect(db) as c:
        (seq,) = c.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    base = int((db.parent / (db.name + ".incarnation")).read_text()) << 40
    return list(range(base + 1, seq + 1))
