"""`gatewayd fleet update` with real gateways: 3 processes, each installed as a release (its own
releases directory with a real venv) and run by a supervisor loop as systemd would, on one
mosquitto; the releases are wheels of this tree at other versions (tests/update_harness.py).

A subscriber on every commands topic counts the update commands each gateway received: a
resumed run sends nothing twice, a halted one nothing to the later waves.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import require_binary
from helpers import Mosquitto, free_port, start_modbus_sim, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from update_harness import (
    FileServer,
    ReleaseKey,
    Supervisor,
    Wheels,
    install_first_release,
    publish_folder,
    site_config,
    update_command,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"
OLD = "0.1.0"
GATEWAYS = ("gw-a", "gw-b", "gw-c")


class CommandCounter:
    """Update commands seen on /devices/+/commands, by (gateway, version)."""

    def __init__(self, port: int) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"counter-{time.time_ns()}")
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_connect = lambda cl, *a: cl.subscribe("/devices/+/commands", 1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10), "command counter: no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        if doc.get("command") == "update":
            with self.lock:
                self.seen[(msg.topic.split("/")[2], str(doc.get("version")))] += 1

    def count(self, gw: str, version: str) -> int:
        with self.lock:
            return self.seen[(gw, version)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@dataclass
class Fleet:
    root: Path
    port: int
    wheels: Wheels
    key: ReleaseKey
    http: FileServer
    counter: CommandCounter
    sups: dict[str, Supervisor]

    def fleet(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)

    def argv(self, *args: str) -> list[str]:
        conn = ["--host", f"127.0.0.1:{self.port}"]
        return [sys.executable, "-m", "gatewayd", "fleet", *args, *conn]

    def software(self) -> dict[str, dict[str, Any]]:
        r = self.fleet("status", "--json")
        assert r.returncode == 0, r.stderr
        return {g["id"]: g for g in json.loads(r.stdout)["gateways"]}

    def command_file(self, version: str, variant: str | None = None, **source: Any) -> Path:
        files = self.wheels.files(version, variant)
        if "url" in source:
            source["url"] = f"{self.http.url}/{version}"
            publish_folder(self.root / "www" / version, files)
        path = self.root / f"update-{version}.json"
        path.write_text(json.dumps(update_command("ignored", version, files, self.key, **source)))
        return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = require_binary("mosquitto")
    root = tmp_path_factory.mktemp("fleet-update")
    wheels = Wheels(root / "wheels")
    key = ReleaseKey(root)
    broker = Mosquitto(root / "mosquitto", free_port(), binary=binary)
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    device_port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", device_port, procs)
    (root / "www").mkdir()
    http = FileServer(root / "www")
    counter = CommandCounter(broker.port)
    sups: dict[str, Supervisor] = {}
    try:
        for gw in GATEWAYS:
            d = root / gw
            (d / "state").mkdir(parents=True)
            releases = d / "releases"
            releases.mkdir()
            install_first_release(releases, OLD, wheels.files(OLD))
            config = d / "gateway.toml"
            config.write_text(
                site_config(
                    d / "state",
                    broker.port,
                    device_port,
                    key.public_path,
                    releases,
                    device=gw,
                    uplink_extra="retain_state = true\n",
                    health_deadline_s=8,
                )
            )
            sups[gw] = Supervisor(releases, config, d / "daemon.log")
        f = Fleet(root, broker.port, wheels, key, http, counter, sups)
        wait_for(
            lambda: (
                all(
                    g.get("software_version") == OLD and g["health"] == "ok"
                    for g in f.software().values()
                )
                and len(f.software()) == len(GATEWAYS)
            ),
            90,
            "every gateway on 0.1.0 in fleet status",
            interval=1.0,
        )
        yield f
    finally:
        for sup in sups.values():
            sup.stop()
        counter.close()
        http.close()
        for p in procs:
            p.kill()
            p.wait(5)
        broker.stop()


def test_fleet_update_in_waves_resumes_after_a_kill_and_sends_each_gateway_once(
    fleet: Fleet,
) -> None:
    cmd = fleet.command_file("0.2.0", url="...")
    state = fleet.root / "good.rollout.json"
    args = ["update", "0.2.0", "--command", str(cmd), "--waves", "1,100%"]
    args += ["--health-timeout", "180", "--state-file", str(state)]
    p = subprocess.Popen(fleet.argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def first_sent() -> bool:
        try:
            plan = json.loads(state.read_text())
        except (OSError, ValueError):
            return False
        return bool(plan["gateways"][plan["waves"][0][0]]["pushed"])

    try:
        wait_for(first_sent, 60, "wave 1's command acknowledged", interval=0.05)
    finally:
        os.kill(p.pid, signal.SIGKILL)  # the operator's process dies mid-wave
        p.wait(10)
    plan = json.loads(state.read_text())
    assert plan["kind"] == "update" and plan["status"] == "running", plan
    r = fleet.fleet(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming the update to 0.2.0" in r.stdout
    assert "update to 0.2.0: DONE" in r.stdout, r.stdout
    plan = json.loads(state.read_text())
    for gw in GATEWAYS:
        g = plan["gateways"][gw]
        assert g["result"] == "applied", g
        assert fleet.counter.count(gw, "0.2.0") == 1, (gw, fleet.counter.seen)
    sw = fleet.software()
    for gw in GATEWAYS:
        assert sw[gw]["software_version"] == "0.2.0", sw[gw]
        assert sw[gw]["last_update"]["status"] == "applied", sw[gw]
        assert sw[gw]["last_update"]["id"] == plan["run_id"], sw[gw]


def test_fleet_update_that_rolls_back_halts_and_the_later_waves_get_nothing(
    fleet: Fleet,
) -> None:
    before = {gw: g["software_version"] for gw, g in fleet.software().items()}
    cmd = fleet.command_file("0.3.0", "no_uplink", source="mqtt")  # the files go as chunks
    wheels = [str(w) for w in fleet.wheels.files("0.3.0", "no_uplink")]
    r = fleet.fleet(
        "update", "0.3.0", "--command", str(cmd), "--wheels", *wheels, "--waves", "1,100%",
        "--health-timeout", "180", "--state-file", str(fleet.root / "bad.rollout.json"),
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    plan = json.loads((fleet.root / "bad.rollout.json").read_text())
    first, *rest = plan["waves"][0] + plan["waves"][1]
    assert plan["status"] == "halted", plan
    assert plan["gateways"][first]["result"] == "rolled_back", plan["gateways"][first]
    assert "0.3.0 not healthy" in plan["gateways"][first]["reason"]
    assert f"1 failed, more than --max-failures 0: {first} rolled_back" in plan["halt_reason"]
    assert "update to 0.3.0: HALTED" in r.stdout, r.stdout
    assert fleet.counter.count(first, "0.3.0") == 1
    for gw in rest:
        assert fleet.counter.count(gw, "0.3.0") == 0, (gw, fleet.counter.seen)
        assert not plan["gateways"][gw]["pushed"]
    sw = fleet.software()
    assert {gw: g["software_version"] for gw, g in sw.items()} == before
    assert sw[first]["last_update"]["status"] == "rolled_back"
