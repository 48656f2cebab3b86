"""A 3-node NATS cluster with JetStream and MQTT on 127.0.0.1, for the fleet tests and bench.

nats-server (Debian) starts its MQTT listener only with a server_name and a jetstream block;
MQTT there is 3.1.1, QoS 0/1, and a '.' or a space in a topic closes the connection. Its MQTT
state (sessions, retained messages, QoS 1 deliveries) lives in JetStream streams, replicated on
all three nodes here so that one node can die. Each node
has its own store directory under the work directory; nodes are stopped by the PID started here.
Users: `gw` for the gateways, `fleet` for the operator's tool (its own credentials).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd_sim.procs import free_port, wait_port

USERS = {"gw": "gw-secret", "fleet": "fleet-secret", "observer": "observer-secret"}


@dataclass
class Node:
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class NatsCluster:
    workdir: Path
    binary: str
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = [Node(f"n{i}", free_port(), free_port(), free_port()) for i in (1, 2, 3)]

    @property
    def mqtt_hosts(self) -> list[str]:
        return [f"127.0.0.1:{n.mqtt_port}" for n in self.nodes]

    def _conf(self, node: Node) -> str:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node
        )
        users = ", ".join(f'{{user: "{u}", password: "{p}"}}' for u, p in USERS.items())
        store = self.workdir / node.name
        return f"""
server_name: {node.name}
listen: 127.0.0.1:{node.client_port}
jetstream {{
  store_dir: "{store}"
  max_memory_store: 64MB
  max_file_store: 256MB
}}
cluster {{
  name: fleet
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{routes}]
}}
authorization {{
  users: [{users}]
}}
mqtt {{
  listen: 127.0.0.1:{node.mqtt_port}
  ack_wait: "10s"
  # Left alone, the MQTT streams get as many replicas as nodes are up when the first client
  # connects (2 when one route is late), and a killed node then stalls them (no quorum).
  stream_replicas: 3
}}
"""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            wait_port(node.mqtt_port, 30)
        # JetStream elects its leaders after the routes are up; MQTT sessions fail until then.
        deadline = time.monotonic() + 60
        for node in self.nodes:
            while not _retained_round_trip(node.mqtt_port):
                if time.monotonic() > deadline:
                    raise AssertionError(f"NATS node {node.name} never served MQTT retained")
                time.sleep(0.5)

    def start_node(self, node: Node) -> None:
        conf = self.workdir / f"{node.name}.conf"
        conf.write_text(self._conf(node))
        log = open(self.workdir / f"{node.name}.log", "ab")  # noqa: SIM115
        node.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )

    def kill(self, node: Node) -> None:
        """SIGKILL, by the PID started here."""
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill(node)


class Observer:
    """Counts every config message each gateway's topic carried, by (gateway, version)."""

    def __init__(self, port: int) -> None:
        self.pushes: Counter[tuple[str, int]] = Counter()
        self.lock = threading.Lock()
        self.start_at = float("inf")
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{time.time_ns()}")
        self.c.username_pw_set("observer", USERS["observer"])
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda cl, *a: cl.subscribe("/devices/+/config", 1)
        self.c.connect("127.0.0.1", port, 10)
        self.c.loop_start()
        assert ready.wait(15), "observer got no SUBACK"
        self.start_at = time.monotonic() + 2.0  # the retained copies arrive right after SUBACK
        time.sleep(2.0)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload or time.monotonic() < self.start_at:
            return  # what the topics held before: not pushes of this run
        key = (msg.topic.split("/")[2], json.loads(msg.payload).get("version"))
        with self.lock:
            # NATS may flag a live delivery retained, and replays the retained copy after a
            # reconnect of this client: a retained copy counts only for a push not seen live.
            if not msg.retain or not self.pushes[key]:
                self.pushes[key] += 1

    def count(self, gw: str, version: int) -> int:
        with self.lock:
            return self.pushes[(gw, version)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class EventCounter:
    """Every record id each gateway's events carried (QoS 1), to count readings lost."""

    def __init__(self, port: int) -> None:
        self.ids: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"events-{time.time_ns()}")
        self.c.username_pw_set("observer", USERS["observer"])
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda cl, *a: cl.subscribe("/devices/+/events", 1)
        self.c.connect("127.0.0.1", port, 10)
        self.c.loop_start()
        assert ready.wait(15), "event counter got no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        records = json.loads(msg.payload)
        if not isinstance(records, list):
            return
        with self.lock:
            self.ids.setdefault(msg.topic.split("/")[2], set()).update(r["id"] for r in records)

    def lost(self, gw: str, state_dir: Path) -> list[int]:
        """Ids from the first one seen to the buffer's last that never arrived and are not in
        the buffer any more (acknowledged by the broker, so they should have)."""
        with self.lock:
            seen = set(self.ids.get(gw, ()))
        last, pending = buffer_state(state_dir)
        if not seen:
            return [last]
        return [i for i in range(min(seen), last + 1) if i not in seen and i not in pending]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def buffer_state(state_dir: Path) -> tuple[int, set[int]]:
    """The highest id the gateway's buffer ever handed out, and the ids still in it."""
    import sqlite3

    db = state_dir / "buffer.sqlite"
    with sqlite3.connect(db, timeout=5) as c:
        pending = {r[0] for r in c.execute("SELECT id FROM records")}
        (seq,) = c.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    return int(seq), pending


def _retained_round_trip(port: int) -> bool:
    """A retained QoS 1 message published and read back on this node: MQTT is ready."""
    got = threading.Event()
    topic = f"/fleet-ready/{port}"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ready-{port}-{time.time_ns()}")
    c.username_pw_set("observer", USERS["observer"])

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        got.set()

    c.on_message = on_message
    try:
        c.connect("127.0.0.1", port, 10)
    except OSError:
        return False
    c.loop_start()
    try:
        info = c.publish(topic, b"ready", qos=1, retain=True)
        info.wait_for_publish(5)
        if not info.is_published():
            return False
        c.subscribe(topic, 1)
        return got.wait(5)
    except (RuntimeError, ValueError):
        return False
    finally:
        c.disconnect()
        c.loop_stop()


# -- a fleet of gateways on the cluster --------------------------------------------------------

POINTS = """
[[devices.points]]
id = "counter"
table = "holding"
address = 0
"""


def fleet_map(path: Path, units: int) -> Path:
    """One simulated Modbus TCP slave with a unit per gateway, each a fast counter."""
    lines = ["# one unit per gateway of the fleet test"]
    for u in range(1, units + 1):
        lines += [
            "[[units]]",
            f"id = {u}",
            "registers = [",
            '  { table = "holding", address = 0, type = "uint16", signal = "counter", '
            "step = 1, period_s = 0.1 },",
            "]",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_doc(
    version: int,
    hosts: list[str],
    device_port: int,
    *,
    gateway: str = "{gateway}",
    unit: str | int = "{label.unit}",
    labels: dict[str, str] | None = None,
    interval_ms: int = 1000,
    health_deadline_s: float = 15.0,
) -> dict[str, Any]:
    """A gateway's configuration as a document: the local file (TOML) and the pushes (JSON).
    With the defaults it is the fleet template: {gateway} and {label.unit} filled per gateway."""
    host, _, port = hosts[0].rpartition(":")
    gw: dict[str, Any] = {"id": gateway, "state_dir": "/var/lib/gatewayd"}
    if labels is not None:
        gw["labels"] = labels
    uplink: dict[str, Any] = {
        "host": host,
        "port": int(port),
        "project": "p1",
        "region": "r1",
        "registry": "reg1",
        "device": gateway,
        "backoff_base_s": 0.2,
        "backoff_cap_s": 2.0,
        "keepalive_s": 10,
        "retain_state": True,  # fleet reads the retained state documents
        "tls": {"enabled": False},
        "auth": {"kind": "password", "username": "gw", "password": USERS["gw"]},
    }
    if len(hosts) > 1:  # every node of the cluster, this gateway's own first
        del uplink["host"], uplink["port"]
        uplink["hosts"] = hosts
    return {
        "version": version,
        "gateway": gw,
        "metrics": {"listen": ""},
        "remote_config": {"health_deadline_s": health_deadline_s},
        "uplink": uplink,
        "devices": [
            {
                "id": "plc",
                "driver": "modbus_tcp",
                "port": device_port,
                "unit": unit,
                "interval_ms": interval_ms,
                "points": [{"id": "counter", "table": "holding", "address": 0}],
            }
        ],
    }


def to_toml(doc: dict[str, Any]) -> str:
    """Just enough TOML for gateway_doc's documents (tables, arrays of tables, scalars)."""
    import json

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return json.dumps(v)

    out: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        plain = {
            k: v
            for k, v in d.items()
            if not isinstance(v, dict | list)
            or k == "labels"
            or (isinstance(v, list) and not (v and isinstance(v[0], dict)))
        }
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(f"{k} = {scalar(v)}" for k, v in plain.items())
        for k, v in d.items():
            if k in plain:
                continue
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v)
            else:
                for item in v:
                    sub = {a: b for a, b in item.items() if not isinstance(b, list)}
                    out.append(f"[[{name}]]")
                    out.extend(f"{a} = {scalar(b)}" for a, b in sub.items())
                    for a, b in item.items():
                        if isinstance(b, list):
                            for x in b:
                                out.append(f"[[{name}.{a}]]")
                                out.extend(f"{c} = {scalar(y)}" for c, y in x.items())

    table("", doc)
    return "\n".join(out) + "\n"


@dataclass
class GatewayFleet:
    """N real `gatewayd run` processes on the cluster, each its own state dir and Modbus unit."""

    work: Path
    cluster: NatsCluster
    sim_port: int
    ids: list[str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sim: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        everything = [*self.procs.values(), *([self.sim] if self.sim else [])]
        for p in everything:
            if p.poll() is None:
                p.terminate()
        for p in everything:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def start_gateways(
    work: Path,
    cluster: NatsCluster,
    n: int,
    hosts_per_gateway: int = 1,
    interval_ms: int = 1000,
    spread: bool = True,
) -> GatewayFleet:
    """Gateway i's first host is node i % 3 (the fleet is spread over the nodes), or, with
    spread=False, node 1 for all (the order gateway_doc's pushed documents give, so a push does
    not move the fleet); labels: site, line (l1/l2 alternating), unit (its Modbus unit)."""
    sim_port = free_port()
    args = ["-m", "gatewayd_sim", "modbus", "--port", str(sim_port)]
    args += ["--map", str(fleet_map(work / "map.toml", n))]
    sim = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    wait_port(sim_port, 30)
    ids = [f"gw-{i:02d}" for i in range(1, n + 1)]
    fleet = GatewayFleet(work, cluster, sim_port, ids, sim=sim)
    for i, gw in enumerate(ids, 1):
        d = work / gw
        (d / "state").mkdir(parents=True)
        first = i % 3 if spread else 0
        hosts = cluster.mqtt_hosts[first:] + cluster.mqtt_hosts[:first]
        local = gateway_doc(
            1,
            hosts[:hosts_per_gateway],
            sim_port,
            gateway=gw,
            unit=i,
            labels={"site": "plant-1", "line": f"l{1 + i % 2}", "unit": str(i)},
            interval_ms=interval_ms,
        )
        (d / "gateway.toml").write_text(to_toml(local))
        fleet.procs[gw] = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "--config", str(d / "gateway.toml")],
            env={**os.environ, "STATE_DIRECTORY": str(d / "state")},
            stdout=open(d / "gateway.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
    return fleet
