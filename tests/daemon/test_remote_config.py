"""Remote configuration against the cloud stand-in, with a real gateway process and real devices."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_procs import scrape, try_scrape, with_metrics
from daemon_procs import start as start_daemon
from helpers import (
    BrokerThread,
    delivered_range,
    free_port,
    gateway_toml,
    start_gateway,
    start_modbus_sim,
    wait_for,
    write_config,
)

from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry

FIXTURES = Path(__file__).parent.parent / "fixtures"
CONFIG_TOPIC = "/devices/gw-test/config"
STATE_TOPIC = "/devices/gw-test/state"
COMMANDS_TOPIC = "/devices/gw-test/commands"
AUTH = 'kind = "jwt"\nalgorithm = "ES256"\nprivate_key = "device.key"\naudience = "p1"'
WRITABLE = """
[[devices.points]]
id = "setpoint"
table = "holding"
address = 20
type = "int16"
scale = 0.1
writable = true
min = 30.0
max = 80.0
"""


class Cloud:
    """The stand-in broker in a thread, with the state and command-result messages it received."""

    def __init__(self, tmp: Path) -> None:
        registry = Registry("p1", "r1", "reg1")
        self.public_key = generate_key(tmp / "device.key", "ES256")
        registry.add("gw-test", self.public_key)
        self.broker = Broker(registry)
        self.states: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.broker.on_message = self._on_message
        self.bt = BrokerThread(self.broker)

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self.lock:
            if topic == STATE_TOPIC:
                self.states.append(json.loads(payload))
            elif topic.endswith("/command-results"):
                self.results.append(json.loads(payload))

    def push(self, doc: dict[str, Any] | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.bt.loop.call_soon_threadsafe(self.broker.publish, CONFIG_TOPIC, payload, True)

    def command(self, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc).encode()
        self.bt.loop.call_soon_threadsafe(self.broker.publish, COMMANDS_TOPIC, payload)

    def outcome(
        self, version: int, status: str | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            with self.lock:
                for s in reversed(self.states):
                    for c in [s.get("config", {}), *reversed(s.get("config_recent", []))]:
                        if c.get("version") == version and status in (None, c["status"]):
                            return dict(c)
            return None

        return wait_for(find, timeout, f"config outcome for version {version}")  # type: ignore[no-any-return]

    @property
    def recorder(self) -> Any:
        return self.broker.recorder


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    try:
        yield c
    finally:
        c.bt.stop()


def _setup(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp: Path, deadline: float = 3.0
) -> tuple[dict[str, Any], Path, int]:
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    points = (FIXTURES / "plc_points.toml").read_text() + WRITABLE
    text = gateway_toml(
        tmp,
        cloud.bt.port,
        port,
        points,
        auth=AUTH,
        tail=f"[remote_config]\nhealth_deadline_s = {deadline}\n",
    )
    cfg = write_config(tmp / "gw.toml", text)
    return tomllib.loads(text), cfg, port


def _running(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp: Path, deadline: float = 3.0
) -> tuple[dict[str, Any], Path, subprocess.Popen[bytes]]:
    """_setup, the gateway started (log gw.log) and its first readings at the cloud."""
    doc, cfg, _ = _setup(cloud, procs, tmp, deadline)
    gw = start_gateway(cfg, procs, tmp / "gw.log")
    _wait_flowing(cloud, "plc", n=5)
    return doc, cfg, gw


def _version(doc: dict[str, Any], version: Any) -> dict[str, Any]:
    """A deep copy of the document with another version, to change and push."""
    new: dict[str, Any] = json.loads(json.dumps(doc))
    new["version"] = version
    return new


def _wait_flowing(cloud: Cloud, device: str, n: int = 20, timeout: float = 20) -> None:
    def count() -> int:
        return sum(1 for r in list(cloud.recorder.records) if r["point"].startswith(device + "/"))

    start = count()
    wait_for(lambda: count() >= start + n, timeout, f"{n} new records from {device}")


def test_valid_push_is_applied_live_new_device_flows_old_stops_nothing_lost(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")
    _wait_flowing(cloud, "plc")
    port2 = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port2, procs)
    new = _version(doc, 2)
    new["devices"][0]["id"] = "plc2"
    new["devices"][0]["port"] = port2
    cloud.push(new)
    outcome = cloud.outcome(2, "applied")
    assert outcome["reason"].startswith("healthy after")
    _wait_flowing(cloud, "plc2")
    time.sleep(0.5)
    before = sum(1 for r in cloud.recorder.records if r["point"].startswith("plc/"))
    time.sleep(1.0)
    after = sum(1 for r in cloud.recorder.records if r["point"].startswith("plc/"))
    assert after == before, "the removed device stopped flowing"
    assert gw.poll() is None, "applied without a restart"
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    ids = sorted(cloud.recorder.counts)
    assert ids == delivered_range(tmp_path / "buffer.sqlite"), "no reading lost across the apply"


def test_invalid_push_is_rejected_with_the_path_and_stale_version_refused(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, _, _ = _running(cloud, procs, tmp_path)
    bad = _version(doc, 5)
    bad["devices"][0]["points"][1]["address"] = 70000
    cloud.push(bad)
    out = cloud.outcome(5, "rejected")
    assert out["reason"].startswith("devices[0].points[1].address: 70000 is above 65535")
    stale = _version(doc, 1)
    stale["devices"][0]["interval_ms"] = 200
    cloud.push(stale)
    out = cloud.outcome(1, "rejected")
    assert "not newer" in out["reason"]
    cloud.push(doc)  # identical to what runs: idempotent
    assert cloud.outcome(1, "applied")["reason"] == "identical to the applied configuration"
    _wait_flowing(cloud, "plc", n=5)


def test_push_to_missing_broker_rolls_back_and_gateway_comes_back(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, gw = _running(cloud, procs, tmp_path, deadline=3.0)
    bad = _version(doc, 3)
    bad["uplink"]["port"] = free_port()  # nothing listens there
    t0 = time.monotonic()
    cloud.push(bad)
    out = cloud.outcome(3, "rolled_back", timeout=30)
    took = time.monotonic() - t0
    assert "uplink not connected within 3 s" in out["reason"], out
    assert took < 20
    _wait_flowing(cloud, "plc", n=10)
    # The retained bad push is re-delivered on every reconnect: it is not tried again, and the
    # state keeps saying why it was rolled back.
    gw.send_signal(signal.SIGKILL)
    gw.wait(5)
    n = len(cloud.states)
    start_gateway(cfg, procs, tmp_path / "gw2.log")
    _wait_flowing(cloud, "plc", n=10)
    wait_for(lambda: len(cloud.states) > n, 10, "a state report after the restart")
    assert cloud.states[-1]["config"]["status"] == "rolled_back"
    assert not (tmp_path / "config" / "candidate.json").exists()


def test_sigkill_during_apply_restarts_on_a_consistent_config(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, gw = _running(cloud, procs, tmp_path, deadline=30.0)
    bad = _version(doc, 4)
    bad["uplink"]["port"] = free_port()
    cloud.push(bad)
    cand = tmp_path / "config" / "candidate.json"
    wait_for(cand.exists, 10, "the candidate on disk")
    gw.send_signal(signal.SIGKILL)  # mid-trial
    gw.wait(5)
    assert json.loads(cand.read_text())["version"] == 4
    # Restarts: the candidate gets its one more try (killed again mid-trial), then the next
    # start rolls it back. Each kill waits until that start has taken its decision.
    g = start_gateway(cfg, procs, tmp_path / "gw0.log")
    wait_for(lambda: json.loads(cand.read_text())["starts"] == 2, 30, "the second try")
    g.send_signal(signal.SIGKILL)
    g.wait(5)
    g = start_gateway(cfg, procs, tmp_path / "gw1.log")
    wait_for(lambda: not cand.exists(), 30, "the rollback at start")
    g.send_signal(signal.SIGKILL)
    g.wait(5)
    start_gateway(cfg, procs, tmp_path / "gw-final.log")
    out = cloud.outcome(4, "rolled_back", timeout=30)
    assert "stopped while applying" in out["reason"]
    assert not cand.exists()
    _wait_flowing(cloud, "plc", n=10)


def test_fuzzed_pushes_never_stop_the_daemon(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, _, gw = _running(cloud, procs, tmp_path)
    rng = random.Random(1234)
    print("fuzz seed 1234")
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            payload = rng.randbytes(rng.randint(0, 512))
        elif kind == 1:
            payload = json.dumps(_random_json(rng, 4)).encode()
        elif kind == 2:
            depth = rng.randint(20, 5000)
            payload = b'{"a":' * depth + b"1" + b"}" * depth
        elif kind == 3:
            payload = b'{"version": 9, "x": "' + b"A" * rng.randint(300_000, 2_000_000) + b'"}'
        else:
            mutated = _version(doc, rng.choice([0, 2, -1, "7", None, 10**30, True]))
            _mutate(mutated, rng)
            payload = json.dumps(mutated).encode()
        cloud.push(payload)
        if i % 50 == 0:
            time.sleep(0.05)
    time.sleep(1.0)
    assert gw.poll() is None, (tmp_path / "gw.log").read_text()[-2000:]
    _wait_flowing(cloud, "plc", n=10)
    # Pushes arriving while a mutated valid one is tried are superseded, the others rejected.
    seen = {s.get("config", {}).get("status") for s in cloud.states}
    assert seen & {"rejected", "superseded"}, seen


def _random_json(rng: random.Random, depth: int) -> Any:
    choice = rng.randint(0, 6 if depth > 0 else 3)
    if choice == 0:
        return rng.randint(-(10**12), 10**12)
    if choice == 1:
        return rng.random() * 1e6
    if choice == 2:
        return "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 20)))
    if choice == 3:
        return rng.choice([None, True, False])
    if choice in (4, 5):
        return {
            rng.choice(["version", "devices", "uplink", "gateway", "x"]): _random_json(
                rng, depth - 1
            )
            for _ in range(rng.randint(0, 4))
        }
    return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]


def _mutate(doc: dict[str, Any], rng: random.Random) -> None:
    dev = doc["devices"][0]
    target = rng.choice([doc, doc["uplink"], dev, rng.choice(dev["points"])])
    key = rng.choice(list(target))
    target[key] = _random_json(rng, 2)


def test_commands_write_only_writable_points_in_range(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    _running(cloud, procs, tmp_path)

    def result(cid: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            with cloud.lock:
                return next((r for r in cloud.results if r["id"] == cid), None)

        return wait_for(find, 10, f"result of command {cid}")  # type: ignore[no-any-return]

    cloud.command({"id": "c1", "point": "plc/u16", "value": 5})
    assert result("c1")["status"] == "refused" and "not writable" in result("c1")["reason"]
    cloud.command({"id": "c2", "point": "plc/setpoint", "value": 95})
    assert result("c2")["status"] == "refused" and result("c2")["reason"].startswith(
        "plc/setpoint: 95 is above max = 80.0"
    )
    cloud.command({"id": "c3", "point": "plc/setpoint", "value": 55.5})
    assert result("c3")["status"] == "ok", result("c3")

    def setpoint_seen() -> bool:
        return any(
            r["point"] == "plc/setpoint" and r["value"] == pytest.approx(55.5)
            for r in list(cloud.recorder.records)
        )

    wait_for(setpoint_seen, 10, "the written setpoint read back from the device")


def test_sighup_reloads_the_local_file_through_the_same_path(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    _, cfg, gw = _running(cloud, procs, tmp_path)
    text = cfg.read_text()
    cfg.write_text(
        text.replace("version = 1", "version = 7").replace("interval_ms = 100", "interval_ms = 50")
    )
    gw.send_signal(signal.SIGHUP)
    assert cloud.outcome(7, "applied")["reason"].startswith("healthy after")
    cfg.write_text(text.replace("address = 0", "address = 99999"))
    gw.send_signal(signal.SIGHUP)
    assert gw.poll() is None
    cfg.write_text(
        text.replace("version = 1", "version = 8").replace("address = 0", "address = 99999")
    )
    gw.send_signal(signal.SIGHUP)
    out = cloud.outcome(8, "rejected")
    assert "address: 99999 is above 65535" in out["reason"]


# -- issue 14: pushes that are valid but wrong -------------------------------------------------


def _outcome_lines(log: Path, status: str) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if f"event=config_{status} " in ln]


def test_push_to_an_unreachable_device_is_rolled_back_and_later_pushes_are_applied(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, _, _ = _running(cloud, procs, tmp_path)
    # Each poll of these completes, with every reading BAD: the driver answered, the device not.
    moves: list[tuple[str, Any]] = [
        ("port", free_port()),  # closed port
        ("unit", 99),  # the simulator stays silent for an unknown unit id
        ("host", "192.0.2.1"),  # TEST-NET-1: unroutable
    ]
    for version, (key, value) in enumerate(moves, start=2):
        bad = _version(doc, version)
        bad["devices"][0][key] = value
        bad["devices"][0]["timeout_s"] = 0.3
        cloud.push(bad)
        out = cloud.outcome(version, "rolled_back", timeout=30)
        assert "plc" in out["reason"] and "completed no good poll" in out["reason"], out
    shadow = _version(doc, 5)  # a file that is no serial port
    shadow["devices"][0] = {
        "id": "plc",
        "driver": "serial_line",
        "serial_port": "/etc/shadow",
        "points": [{"id": "t", "field": "t"}],
    }
    cloud.push(shadow)
    out = cloud.outcome(5, "rolled_back", timeout=30)
    assert "plc" in out["reason"] and "completed no good poll" in out["reason"], out
    good = _version(doc, 9)
    good["devices"][0]["timeout_s"] = 0.5
    cloud.push(good)
    assert cloud.outcome(9, "applied")["reason"].startswith("healthy after")
    _wait_flowing(cloud, "plc", n=10)


def test_push_that_starves_the_existing_device_is_rolled_back(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    start_daemon(cfg, procs, tmp_path / "gw.log", plugins=True)
    _wait_flowing(cloud, "plc", n=10)
    heavy = _version(doc, 2)
    heavy["remote_config"]["health_deadline_s"] = 8.0
    heavy["devices"] += [
        {
            "id": f"busy{i}",
            "driver": "test_busy",
            "interval_ms": 10,
            "points": [{"id": "p0", "table": "holding", "address": 0}],
        }
        for i in range(300)
    ]
    cloud.push(heavy)
    # The starved loop also slows the apply and the rollback: 36-43 s on an idle 2-core box,
    # over 60 s with other tests beside it. The deadline decides; this wait only bounds a hang.
    out = cloud.outcome(2, "rolled_back", timeout=180)
    assert "device plc polled" in out["reason"] and "starves it" in out["reason"], out
    _wait_flowing(cloud, "plc", n=10)


def test_push_changing_the_identity_or_config_topic_is_refused_and_the_topic_still_heard(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    cloud.broker.registry.add("gw-other", cloud.public_key)  # the rename would connect fine
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")
    _wait_flowing(cloud, "plc", n=5)
    changes: list[tuple[str, str, str]] = [
        ("device", "gw-other", "uplink.device: would change 'gw-test' to 'gw-other'"),
        ("client_id", "projects/p1/x/{device}", "uplink.client_id: would change"),
    ]
    for version, (key, value, reason) in enumerate(changes, start=2):
        new = _version(doc, version)
        new["uplink"][key] = value
        cloud.push(new)
        out = cloud.outcome(version, "rejected")
        assert out["reason"].startswith(reason) and "only in the local file" in out["reason"], out
    topic = _version(doc, 4)
    topic["uplink"]["topics"] = {"config": "/devices/{device}/config2"}
    cloud.push(topic)
    assert cloud.outcome(4, "rejected")["reason"].startswith("uplink.topics.config: would change")
    gw.send_signal(signal.SIGKILL)  # across a restart the gateway still hears its config topic
    gw.wait(5)
    start_gateway(cfg, procs, tmp_path / "gw2.log")
    _wait_flowing(cloud, "plc", n=5)
    ok = _version(doc, 5000)
    ok["devices"][0]["interval_ms"] = 150
    cloud.push(ok)
    assert cloud.outcome(5000, "applied")["reason"].startswith("healthy after")


def test_push_pointing_a_credential_at_another_file_is_refused(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # A push that may name any file as the token (sent as the MQTT username) or key, together
    # with another host, would read out any file the daemon can read: the paths of secrets are
    # provisioning, like the identity.
    doc, _, _ = _running(cloud, procs, tmp_path)
    changes = [
        ("auth", "private_key", "/etc/hostname"),
        ("auth", "device_key_file", "/etc/hostname"),
        ("auth", "access_token_file", "/etc/hostname"),
        ("tls", "key_file", "/etc/hostname"),
    ]
    for version, (table, key, value) in enumerate(changes, start=2):
        new = _version(doc, version)
        new["uplink"].setdefault(table, {})[key] = value
        cloud.push(new)
        out = cloud.outcome(version, "rejected")
        assert out["reason"].startswith(f"uplink.{table}.{key}: cannot be changed by a push"), out
        assert "local file" in out["reason"], out
    _wait_flowing(cloud, "plc", n=5)


def test_pushes_arriving_during_a_candidate_each_get_an_outcome_and_the_newest_is_tried(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path, deadline=4.0)
    log = tmp_path / "gw.log"
    start_gateway(cfg, procs, log)
    _wait_flowing(cloud, "plc", n=5)
    slow = _version(doc, 2)
    slow["devices"][0]["port"] = free_port()  # judged for the whole deadline, then rolled back
    cloud.push(slow)
    wait_for(lambda: _outcome_lines(log, "candidate") or None, 10, "the candidate")
    for version in (3, 4, 5):
        new = _version(doc, version)
        new["devices"][0]["interval_ms"] = 100 + version
        cloud.push(new)
        time.sleep(0.1)
    assert "version 2" not in cloud.outcome(5, "applied", timeout=30)["reason"]
    assert cloud.outcome(2, "rolled_back")  # the state went through 2 before 5
    superseded = _outcome_lines(log, "superseded")
    assert [ln.split("version=")[1].split()[0] for ln in superseded] == ["3", "4"], superseded


def test_settings_not_applied_live_and_hostile_numbers_are_refused_with_the_place(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    mport = free_port()
    cfg.write_text(with_metrics(cfg.read_text(), mport))
    doc = tomllib.loads(cfg.read_text())
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")
    _wait_flowing(cloud, "plc", n=5)

    def push(version: int, edit: Any) -> None:
        new = _version(doc, version)
        edit(new)
        cloud.push(json.dumps(new).encode())  # NaN goes out as the NaN literal

    push(2, lambda d: d.setdefault("buffer", {}).update(max_bytes=1 << 20))
    out = cloud.outcome(2, "rejected")
    assert out["reason"].startswith("buffer.max_bytes: cannot be changed by a push"), out
    push(3, lambda d: d["metrics"].update(listen="0.0.0.0:9999"))
    out = cloud.outcome(3, "rejected")
    assert out["reason"].startswith("metrics.listen: cannot be changed by a push"), out
    assert "beyond loopback" in out["reason"]
    # NaN once kept a bad candidate forever (no deadline ever passed) and blocked every push.
    push(
        4,
        lambda d: (
            d["remote_config"].update(health_deadline_s=float("nan")),
            d["uplink"].update(port=free_port()),
        ),
    )
    out = cloud.outcome(4, "rejected")
    assert out["reason"].startswith(
        "remote_config.health_deadline_s: NaN is not a number; use a number from 1 to 3600"
    ), out
    push(5, lambda d: d["devices"][0]["points"][0].update(scale=float("inf")))
    assert (
        "points[0].scale: Infinity is not a finite number" in cloud.outcome(5, "rejected")["reason"]
    )
    cloud.push(b'{"version": 6, "version": 7}')
    wait_for(
        lambda: (
            any(
                "appears twice" in (s.get("config") or {}).get("reason", "")
                for s in list(cloud.states)
            )
            or None
        ),
        30,
        "the duplicate key refused",
    )
    # Version 10**400 once broke /metrics and `gatewayd status` for good.
    huge = _version(doc, 10**400)
    cloud.push(huge)
    wait_for(
        lambda: (
            any(
                "version: an integer of 401 digits is out of range"
                in (s.get("config") or {}).get("reason", "")
                for s in list(cloud.states)
            )
            or None
        ),
        30,
        "the huge version refused",
    )
    assert scrape(mport).get("gatewayd_config_version") == 1
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", "status", "--listen", f"127.0.0.1:{mport}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    push(8, lambda d: d["devices"][0].update(interval_ms=150))
    assert cloud.outcome(8, "applied")["reason"].startswith("healthy after")
    assert gw.poll() is None


def test_a_reconnect_does_not_count_or_rewrite_the_same_config_again(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    mport = free_port()
    cfg.write_text(with_metrics(cfg.read_text(), mport))
    doc = tomllib.loads(cfg.read_text())
    start_gateway(cfg, procs, tmp_path / "gw.log")
    _wait_flowing(cloud, "plc", n=5)
    new = _version(doc, 2)
    new["devices"][0]["interval_ms"] = 150
    cloud.push(new)
    cloud.outcome(2, "applied")
    history = tmp_path / "config" / "history.json"
    before = (history.stat().st_mtime_ns, history.read_bytes())
    applied = scrape(mport).get("gatewayd_config_outcomes_total", status="applied")
    for _ in range(3):
        n = cloud.broker.connections
        cloud.bt.loop.call_soon_threadsafe(cloud.broker.drop_all)
        wait_for(lambda n=n: cloud.broker.connections > n or None, 30, "a reconnect")
        _wait_flowing(cloud, "plc", n=5)  # the retained config came again with the subscribe
    assert scrape(mport).get("gatewayd_config_outcomes_total", status="applied") == applied
    assert (history.stat().st_mtime_ns, history.read_bytes()) == before


def test_start_only_settings_come_from_the_local_file_not_from_a_stored_push(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """An older gatewayd stored pushes that moved metrics (to 0.0.0.0, at the next start)."""
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    local_port, pushed_port = free_port(), free_port()
    cfg.write_text(with_metrics(cfg.read_text(), local_port))
    doc = tomllib.loads(cfg.read_text())
    stored = _version(doc, 2)
    stored["metrics"]["listen"] = f"0.0.0.0:{pushed_port}"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "applied.json").write_text(
        json.dumps({"version": 2, "document": stored})
    )
    start_gateway(cfg, procs, tmp_path / "gw.log")
    samples = wait_for(lambda: try_scrape(local_port), 30, "metrics on the local file's address")
    assert samples.get("gatewayd_config_version") == 2, "the stored configuration runs"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pushed_port), timeout=2).close()


def test_a_stored_version_beyond_2_53_neither_breaks_metrics_nor_blocks_pushes(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """What c3de71f stored after a push with version 10**400: it broke /metrics for good."""
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    mport = free_port()
    cfg.write_text(with_metrics(cfg.read_text(), mport))
    doc = tomllib.loads(cfg.read_text())
    huge = _version(doc, 10**400)
    state = tmp_path / "config"
    state.mkdir()
    (state / "applied.json").write_text(json.dumps({"version": 10**400, "document": huge}))
    (state / "history.json").write_text(json.dumps({"highest_tried": 10**400}))
    start_gateway(cfg, procs, tmp_path / "gw.log")
    samples = wait_for(lambda: try_scrape(mport), 30, "the metrics endpoint")
    assert samples.get("gatewayd_config_version") == 1, "the local file runs"
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", "status", "--listen", f"127.0.0.1:{mport}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    _wait_flowing(cloud, "plc", n=5)
    new = _version(doc, 2)
    new["devices"][0]["interval_ms"] = 150
    cloud.push(new)
    assert cloud.outcome(2, "applied")["reason"].startswith("healthy after")
