"""Labels in the configuration and the state document; fleet's own pure parts (waves,
documents per gateway, the state file, --require); the daemon never loads the fleet tool."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import Mosquitto, gateway_toml, start_gateway, wait_for, write_config
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.config import ConfigError, load
from gatewayd.fleet.broker import FleetError, Seen
from gatewayd.fleet.plan import GatewayPlan, Plan, for_gateway, parse_waves
from gatewayd.fleet.plan import load as load_plan
from gatewayd.fleet.plan import save as save_plan
from gatewayd.fleet.state import read
from gatewayd.fleet.waves import compile_require

BASE = 'version = 1\n[gateway]\nid = "g"\n{labels}\n[uplink.auth]\nkind = "none"\n'


def test_labels_parse_sorted_and_default_empty() -> None:
    cfg = load(BASE.format(labels='labels = { site = "plant-3", line = "L2.a" }'))
    assert cfg.labels == (("line", "L2.a"), ("site", "plant-3"))
    assert load(BASE.format(labels="")).labels == ()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ('labels = { Site = "x" }', "gateway.labels.Site: is not a valid label name"),
        ('labels = { site = "a b" }', "gateway.labels.site: 'a b' is not a valid label value"),
        ('labels = { site = "a=b" }', "gateway.labels.site: 'a=b' is not a valid label value"),
        ('labels = { site = "" }', "gateway.labels.site: '' is not a valid label value"),
        ("labels = { site = 3 }", "gateway.labels.site: expected a string, got an integer"),
        ('labels = "site=x"', "gateway.labels: expected a table, got a string"),
    ],
)
def test_bad_labels_are_refused_with_the_place(labels: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(BASE.format(labels=labels))
    assert str(err.value).startswith(message), str(err.value)


def test_too_many_labels() -> None:
    many = ", ".join(f'k{i} = "v"' for i in range(17))
    with pytest.raises(ConfigError, match="more than 16 labels"):
        load(BASE.format(labels=f"labels = {{ {many} }}"))


def test_state_document_carries_labels_and_a_stamp(
    tmp_path: Path, mosquitto: Mosquitto, procs: list[subprocess.Popen[bytes]]
) -> None:
    """A real gateway against mosquitto: fleet reads labels, version and buffer from its state."""
    toml = gateway_toml(tmp_path / "state", mosquitto.port, 1, "", interval_ms=1000)
    toml = toml.replace(
        'state_dir = "', 'labels = { site = "plant-3", line = "l2" }\nstate_dir = "', 1
    )
    (tmp_path / "state").mkdir()
    start_gateway(write_config(tmp_path / "gw.toml", toml), procs, tmp_path / "gw.log")
    docs: list[dict[str, Any]] = []
    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="labels-sub")

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        docs.append(json.loads(msg.payload))
        got.set()

    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe("/devices/gw-test/state", 1)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        wait_for(lambda: docs, 30, "a state document")
    finally:
        c.loop_stop()
        c.disconnect()
    doc = docs[-1]
    assert doc["labels"] == {"line": "l2", "site": "plant-3"}
    assert isinstance(doc["ts"], int) and "buffer_oldest_ts" in doc
    view = read("gw-test", Seen(doc, 0.0, retained=True))
    assert view.matches({"site": "plant-3"}) and not view.matches({"site": "plant-4"})
    assert view.config_version == 1 and view.seen_ts == doc["ts"] / 1000


def test_the_daemon_does_not_load_the_fleet_tool() -> None:
    code = (
        "import sys, gatewayd.cli, gatewayd.daemon, gatewayd.uplink; "
        "sys.exit(any(m.startswith('gatewayd.fleet') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_waves_are_sizes_or_percentages_capped_at_what_is_left() -> None:
    assert parse_waves("1,5%,25%,100%", 50) == [1, 3, 13, 33]
    assert parse_waves("1,5,20,24", 50) == [1, 5, 20, 24]
    assert parse_waves("1,100%", 1) == [1]
    assert parse_waves("2,2", 10) == [2, 2], "a partial rollout leaves the rest untouched"
    for bad in ("0", "x", "150%", ""):
        with pytest.raises(FleetError):
            parse_waves(bad, 10)


def test_document_per_gateway_fills_placeholders_and_keeps_labels() -> None:
    doc = {"version": 2, "gateway": {"id": "{gateway}"}, "devices": [{"unit": "{label.unit}"}]}
    out = for_gateway(doc, "gw-07", {"unit": "7", "site": "a"})
    assert out == {
        "version": 2,
        "gateway": {"id": "gw-07", "labels": {"unit": "7", "site": "a"}},
        "devices": [{"unit": 7}],
    }
    assert doc["gateway"] == {"id": "{gateway}"}, "the template is not changed"
    with pytest.raises(FleetError, match="no label 'unit'"):
        for_gateway(doc, "gw-08", {})


def test_state_file_round_trips_and_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    g = GatewayPlan("gw-1", 1, {"a": "b"}, 1, {"version": 1}, pushed=True, result="applied")
    plan = Plan("d1", 2, {}, [["gw-1"]], 0, 30.0, None, {"gw-1": g})
    save_plan(plan, path)
    assert load_plan(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"], "no temporary file left"
    path.write_text("{torn")
    with pytest.raises(FleetError, match="not a rollout state file"):
        load_plan(path)


def test_require_uses_the_rules_language_on_state_fields() -> None:
    check = compile_require("devices_bad == 0 and buffer_depth < 100")
    assert check is not None
    doc = {"devices": {"plc": {"status": "up", "good": 3, "bad": {}}}, "buffer_depth": 5}
    assert check(read("g", Seen(doc, 0.0, False)))
    doc["devices"]["plc"]["status"] = "down"
    assert not check(read("g", Seen(doc, 0.0, False)))
    for bad in ("__import__('os')", "devices_bad.real", "nosuch == 1"):
        with pytest.raises(FleetError, match="--require"):
            compile_require(bad)


def test_a_timeout_names_the_subscriptions_its_broker_refused() -> None:
    """bench/fleet.py: NATS refused a gateway's config subscription for 3.5 minutes after a node
    was killed; the push never reached it, and the timeout said only "no outcome"."""
    from gatewayd.fleet.rollout import ConfigJob

    plan = Plan("d", 8, {}, [["g"]], 0, 120.0, None, {"g": GatewayPlan("g", 1, {}, 7, None)})
    job = ConfigJob(None, plan, {"version": 8})  # type: ignore[arg-type]  # no broker needed
    doc: dict[str, Any] = {"config": {"version": 7, "status": "applied"}, "counters": {}}
    assert "refused" not in job.timeout_reason(plan.gateways["g"], read("g", Seen(doc, 0, False)))
    doc["counters"]["uplink_subscribe_refused"] = 2
    reason = job.timeout_reason(plan.gateways["g"], read("g", Seen(doc, 0, False)))
    assert reason.startswith("no outcome for version 8 within 120 s (last: v7 applied)"), reason
    assert "its broker refused 2 of its subscriptions" in reason
