"""`gatewayd fleet` against a 3-node NATS cluster (JetStream + MQTT) and 5 real gateways.

Each gateway is a `gatewayd run` process with its own state directory and its own unit of one
simulated Modbus slave; fleet connects with its own user. The scenarios share the fleet and run
in order, each pushing a version above the last (versions only go up). An observer subscribed
to every config topic counts the pushes each gateway received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary
from helpers import free_port, wait_for
from nats_cluster import (
    USERS,
    EventCounter,
    NatsCluster,
    Observer,
    gateway_doc,
    start_gateways,
)

GATEWAYS = 5


@dataclass
class Fleet:
    work: Path
    cluster: NatsCluster
    sim_port: int
    observer: Observer
    ids: list[str]
    version: int = 1

    def conn(self) -> list[str]:
        return [
            "--host",
            ",".join(self.cluster.mqtt_hosts),
            "--username",
            "fleet",
            "--password",
            USERS["fleet"],
        ]

    def fleet(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatewayd", "fleet", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.work,
        )

    def status(self) -> dict[str, Any]:
        r = self.fleet("status", *self.conn(), "--json")
        assert r.returncode == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def doc(self, name: str, **kw: Any) -> Path:
        self.version += 1
        path = self.work / f"{name}.json"
        hosts = self.cluster.mqtt_hosts  # every node: a gateway fails over to the next
        path.write_text(json.dumps(gateway_doc(self.version, hosts, **kw)))
        return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    binary = require_binary("nats-server")
    work = tmp_path_factory.mktemp("fleet")
    cluster = NatsCluster(work / "nats", binary)
    stop: list[Any] = []
    try:
        cluster.start()
        gws = start_gateways(work, cluster, GATEWAYS, hosts_per_gateway=3)
        stop.append(gws.stop)
        # On the node that is never killed (the failover scenario kills the first).
        observer = Observer(cluster.nodes[2].mqtt_port)
        f = Fleet(work, cluster, gws.sim_port, observer, gws.ids)
        wait_for(
            lambda: len([g for g in f.status()["gateways"] if g["devices_good"] == 1]) == GATEWAYS,
            90,
            "every gateway polling and publishing state",
            interval=1.0,
        )
        yield f
        observer.close()
    finally:
        for fn in stop:
            fn()
        cluster.stop()


def test_status_shows_every_gateway_with_labels_and_a_roll_up(fleet: Fleet) -> None:
    r = fleet.fleet("status", *fleet.conn(), "--select", "line=l2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[1:-2]] == ["gw-01", "gw-03", "gw-05"], r.stdout
    assert "3 gateways: 3 healthy, 0 stale" in lines[-1], r.stdout
    doc = fleet.status()
    assert doc["summary"]["gateways"] == GATEWAYS
    assert all(g["config_version"] == 1 and g["uplink"] == "connected" for g in doc["gateways"])


def test_a_good_config_rolled_out_in_waves_is_applied_everywhere(fleet: Fleet) -> None:
    doc = fleet.doc("good", device_port=fleet.sim_port)
    r = fleet.fleet(
        "rollout", str(doc), *fleet.conn(), "--waves", "1,2,100%", "--health-timeout", "60",
        "--require", "devices_bad == 0",
    )  # fmt: skip
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"rollout of version {fleet.version}: DONE" in r.stdout
    assert "5 applied, 0 failed, 0 never pushed" in r.stdout
    assert [ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("wave ")] == [
        "wave 1/3",
        "wave 2/3",
        "wave 3/3",
    ]
    assert all(fleet.observer.count(gw, fleet.version) == 1 for gw in fleet.ids)
    wait_for(
        lambda: all(g["config_version"] == fleet.version for g in fleet.status()["gateways"]),
        30,
        "every state document on the new version",
        interval=1.0,
    )


def test_an_unhealthy_config_halts_after_the_first_wave_and_is_put_back(fleet: Fleet) -> None:
    before = fleet.version
    doc = fleet.doc("unhealthy", device_port=free_port())  # nothing listens there
    r = fleet.fleet(
        "rollout", str(doc), *fleet.conn(), "--waves", "1,2,100%", "--health-timeout", "60",
        "--require", "devices_bad == 0",
    )  # fmt: skip
    print(r.stdout)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"rollout of version {fleet.version}: HALTED" in r.stdout
    first, *others = fleet.ids
    plan = json.loads((fleet.work / "unhealthy.json.rollout.json").read_text())
    g1 = plan["gateways"][first]
    # A gateway that judges device health itself rolls back; one that does not is caught by
    # --require on its state document. Either way the wave failed, with the reason.
    assert g1["result"] in ("rolled_back", "require_failed"), g1
    assert g1["reason"]
    assert g1["reverted"] == f"pushed v{fleet.version + 1}: applied", g1
    assert fleet.observer.count(first, fleet.version) == 1
    assert all(fleet.observer.count(gw, fleet.version) == 0 for gw in others), "never received"
    assert all(plan["gateways"][gw]["pushed"] is False for gw in others)
    fleet.version += 1  # the put-back version
    wait_for(
        lambda: {g["id"]: g["devices_good"] for g in fleet.status()["gateways"]}[first] == 1,
        30,
        f"{first} polling its device again (back on version {before}'s content)",
        interval=1.0,
    )


def test_a_killed_rollout_resumes_and_pushes_nothing_twice(fleet: Fleet) -> None:
    doc = fleet.doc("resume", device_port=fleet.sim_port, interval_ms=500)
    state = fleet.work / "resume.json.rollout.json"
    args = [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(doc), *fleet.conn()]
    args += ["--waves", "1,4", "--health-timeout", "60"]
    p = subprocess.Popen(args, cwd=fleet.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def mid_second_wave() -> bool:
        try:
            plan = json.loads(state.read_text())
        except (OSError, ValueError):
            return False
        second = [plan["gateways"][g] for g in plan["waves"][1]]
        return any(g["pushed"] for g in second) and not all(g["result"] for g in second)

    try:
        wait_for(mid_second_wave, 90, "the rollout in the middle of its second wave", 0.01)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    plan = json.loads(state.read_text())
    assert plan["status"] == "running"
    r = fleet.fleet("rollout", str(doc), *fleet.conn(), "--waves", "1,4", "--health-timeout", "60")
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming the rollout of version {fleet.version}" in r.stdout
    assert "5 applied, 0 failed" in r.stdout
    time.sleep(1.0)  # a late duplicate would arrive by now
    assert {gw: fleet.observer.count(gw, fleet.version) for gw in fleet.ids} == dict.fromkeys(
        fleet.ids, 1
    ), "every gateway pushed exactly once across both runs"


def test_a_node_killed_during_a_rollout_fails_over_and_loses_no_reading(fleet: Fleet) -> None:
    """Every gateway is on the first node (the pushes list it first); it is SIGKILLed after the
    first wave. The gateways and fleet itself move to the other nodes; the rollout completes."""
    killed = fleet.cluster.nodes[0]
    events = EventCounter(fleet.cluster.nodes[2].mqtt_port)
    try:
        wait_for(lambda: all(events.ids.get(g) for g in fleet.ids), 90, "events from all")
        doc = fleet.doc("failover", device_port=fleet.sim_port, interval_ms=400)
        state = fleet.work / "failover.json.rollout.json"
        args = [sys.executable, "-m", "gatewayd", "fleet", "rollout", str(doc), *fleet.conn()]
        # NATS 2.9 refuses subscriptions for 40-90 s after losing a node (JetStream's consumers).
        args += ["--waves", "1,2,2", "--health-timeout", "120"]
        p = subprocess.Popen(args, cwd=fleet.work, stdout=subprocess.PIPE, text=True)

        def first_wave_done() -> bool:
            try:
                plan = json.loads(state.read_text())
            except (OSError, ValueError):
                return False
            return bool(plan["gateways"][plan["waves"][0][0]]["result"])

        wait_for(first_wave_done, 60, "the first wave's answer")
        fleet.cluster.kill(killed)
        out, _ = p.communicate(timeout=360)
        print(out)
        assert p.returncode == 0, out
        assert "5 applied, 0 failed" in out
        dead = f"127.0.0.1:{killed.mqtt_port}"

        def settled() -> bool:
            r = fleet.fleet("status", *fleet.conn(), "--json")
            if r.returncode != 0:  # the cluster may refuse sessions while it recovers
                return False
            gws = json.loads(r.stdout)["gateways"]
            return len(gws) == GATEWAYS and all(
                g["uplink_host"] not in (None, dead) and g["buffer_oldest_age_s"] < 5
                and not g["stale"] and g["last_seen_age_s"] < 5
                for g in gws
            )  # fmt: skip

        wait_for(settled, 60, "every gateway on a live node, nothing old in its buffer", 1.0)
        time.sleep(2.0)  # the last acked messages reach the subscriber
        lost = {gw: events.lost(gw, fleet.work / gw / "state") for gw in fleet.ids}
        print({gw: len(events.ids[gw]) for gw in fleet.ids}, "records seen per gateway")
        assert lost == {gw: [] for gw in fleet.ids}, "readings lost, by record id"
    finally:
        events.close()
