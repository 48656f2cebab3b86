"""The gateway under `profile = "aws-iot-core"`, end to end: real processes, sockets and mTLS.

gatewayd (a process, reading a Modbus simulator) -> the AWS IoT Core stand-in
(hw-sim/cloud/aws.py) with the thing's certificate: readings counted by id against the buffer's
delivered range; a configuration pushed as the named shadow's desired `document` applied live
and its outcome read from the shadow's reported state; a reconnect's shadow GET not counted as
a new outcome; a rollback reported there; a document over the shadow's 8 KB through a Job, its
outcome on the job execution; a write as a Job and a ping on the commands topic, answered;
AWS's limits never hit (nothing throttled, no connection closed for a topic or a payload).
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    BrokerThread,
    delivered_range,
    free_port,
    start_gateway,
    start_modbus_sim,
    wait_for,
    write_config,
)
from test_cloud_azure_e2e import Hub, _outcome_lines, plc_device

from gatewayd_sim.cloud.aws import MAX_SHADOW_STATE, AwsIotCore

FIXTURES = Path(__file__).parent.parent / "fixtures"
DEVICE = "gw-test"
SHADOW = "gatewayd"


def _config(tmp: Path, port: int, ca: Path, cert: Path, key: Path, device_port: int) -> str:
    return f"""
version = 1
[gateway]
id = "gw-test"
state_dir = "{tmp}"
[uplink]
profile = "aws-iot-core"
region = "eu-west-1"
host = "127.0.0.1"
port = {port}
device = "{DEVICE}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
[uplink.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
{plc_device(device_port)}"""


class Aws(Hub):
    """The Azure test's helpers (outcome, records, flowing) over the AWS stand-in's shadow."""

    def __init__(self, tmp: Path) -> None:  # no super(): Hub starts an IoT Hub
        self.cloud = self.hub = AwsIotCore(tmp / "aws")  # type: ignore[assignment]
        self.cert, self.key = self.cloud.issue_thing(DEVICE)
        self.results: list[dict[str, Any]] = []
        self.gets = 0  # the gateway's shadow GETs
        self.cloud.on_message = self._seen
        self.bt = BrokerThread(self.cloud)

    def _seen(self, topic: str, payload: bytes) -> None:
        if topic == f"$aws/things/{DEVICE}/shadow/name/{SHADOW}/get":
            self.gets += 1
        if topic == f"gatewayd/{DEVICE}/command-results":
            self.results.append(json.loads(payload))

    def on_loop(self, fn: Any, *args: Any) -> None:
        self.bt.loop.call_soon_threadsafe(fn, *args)

    def reported(self) -> dict[str, Any]:
        return self.bt.call(self._reported())  # type: ignore[no-any-return]

    async def _reported(self) -> dict[str, Any]:
        sh = self.cloud.shadows.get((DEVICE, SHADOW))
        return copy.deepcopy(sh.reported or {}) if sh is not None else {}

    def desire(self, document: dict[str, Any]) -> None:
        self.on_loop(self.cloud.update_shadow, DEVICE, SHADOW, {"desired": {"document": document}})

    def job(self, job_id: str, document: dict[str, Any]) -> None:
        self.on_loop(self.cloud.create_job, DEVICE, job_id, document)

    def job_done(self, job_id: str, timeout: float = 30) -> tuple[str, dict[str, str]]:
        async def state() -> tuple[str, dict[str, str]] | None:
            for j in self.cloud.jobs.get(DEVICE, []):
                if j.job_id == job_id and j.status not in ("QUEUED", "IN_PROGRESS"):
                    return j.status, dict(j.status_details)
            return None

        return wait_for(lambda: self.bt.call(state()), timeout, f"job {job_id} done")  # type: ignore[no-any-return]


@pytest.fixture
def aws(tmp_path: Path) -> Any:
    a = Aws(tmp_path)
    try:
        yield a
    finally:
        a.bt.stop()


def _with_plc(aws: Aws, procs: list[subprocess.Popen[bytes]], tmp: Path) -> str:
    """The gateway's config, with the simulated PLC it polls started."""
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    return _config(tmp, aws.cloud.port, aws.cloud.ca.ca_file, aws.cert, aws.key, port)


def _big(doc: dict[str, Any], version: int) -> dict[str, Any]:
    """The document with copies of a point, until it is over the shadow's 8 KB."""
    new = copy.deepcopy(doc)
    new["version"] = version
    new["devices"][0]["interval_ms"] = 500
    u16 = next(p for p in new["devices"][0]["points"] if p["id"] == "u16")
    i = 0
    while len(json.dumps(new)) <= MAX_SHADOW_STATE + 1024:
        i += 1
        new["devices"][0]["points"].append({**u16, "id": f"u16_copy_{i}"})
    return new


def test_aws_shadow_config_rollback_jobs_and_commands_nothing_lost(
    aws: Aws, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    text = _with_plc(aws, procs, tmp_path)
    cfg = write_config(tmp_path / "gw.toml", text)
    doc = tomllib.loads(text)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, procs, log)
    aws.flowing()
    wait_for(lambda: aws.reported().get("config_version") == 1, 20, "state in the shadow")

    # A whole document as the shadow's desired state: applied live, its outcome reported there.
    new = copy.deepcopy(doc)
    new["version"] = 2
    new["devices"][0]["interval_ms"] = 200
    aws.desire(new)
    assert aws.outcome(2, "applied")["reason"].startswith("healthy after")
    wait_for(lambda: aws.reported().get("config_version") == 2, 20, "version 2 reported")

    # A reconnect GETs the shadow again: the same document is no new outcome.
    applied = len(_outcome_lines(log, "applied"))
    gets = aws.gets
    aws.on_loop(aws.cloud.drop_all)
    wait_for(lambda: aws.gets > gets, 20, "the shadow GET after the reconnect")
    aws.flowing(n=10)
    assert len(_outcome_lines(log, "applied")) == applied

    # An unreachable port leaves the uplink down past the health deadline: rolled back, and
    # reported in the shadow once the gateway is back on the last good configuration.
    bad = copy.deepcopy(new)
    bad["version"] = 3
    bad["uplink"]["port"] = free_port()
    aws.desire(bad)
    out = aws.outcome(3, "rolled_back")
    assert "uplink not connected within 3 s" in out["reason"], out
    aws.flowing(n=10)

    # Back to a good document through the shadow.
    good = copy.deepcopy(new)
    good["version"] = 4
    aws.desire(good)
    aws.outcome(4, "applied")

    # Over the shadow's 8 KB a Job carries it; its outcome ends the job execution. It changes the
    # uplink too: the new session reads the shadow again (version 4, older than what runs now,
    # a redelivery: no "not newer" rejection) and asks for the job again (the same one, still
    # being judged: answered once, when decided).
    big = _big(good, 5)
    big["uplink"]["keepalive_s"] = 50
    assert len(json.dumps({"state": {"desired": {"document": big}}})) > MAX_SHADOW_STATE
    gets = aws.gets
    aws.job("config-5", {"operation": "config", "document": big})
    status, details = aws.job_done("config-5")
    assert (status, details["status"], details["version"]) == ("SUCCEEDED", "applied", "5")
    assert details["reason"].startswith("healthy after"), details
    wait_for(lambda: aws.reported().get("config_version") == 5, 20, "version 5 reported")
    assert aws.gets > gets, "the new session read the shadow"
    aws.flowing("plc", n=20)
    assert _outcome_lines(log, "rejected") == []

    # A Job that reuses version 5 with another document is refused as not newer, not answered
    # "applied" from version 5's outcome (it was, before outcomes carried the document's digest);
    # the same document again is answered from that outcome.
    other = copy.deepcopy(big)
    other["devices"][0]["interval_ms"] = 300
    aws.job("config-5-other", {"operation": "config", "document": other})
    status, details = aws.job_done("config-5-other")
    assert (status, details["status"]) == ("FAILED", "rejected"), details
    assert "not newer" in details["reason"], details
    aws.job("config-5-again", {"operation": "config", "document": big})
    status, details = aws.job_done("config-5-again")
    assert (status, details["status"]) == ("SUCCEEDED", "applied"), details

    # Commands: a range-checked write as a Job, a ping on the commands topic.
    write = {"point": "plc/setpoint", "value": 55.5}
    aws.job("write-1", {"operation": "command", "command": write})
    assert aws.job_done("write-1") == (
        "SUCCEEDED",
        {"status": "ok", "reason": "wrote 55.5 to plc/setpoint"},
    )
    aws.job("write-2", {"operation": "command", "command": {**write, "value": 95}})
    status, details = aws.job_done("write-2")
    assert status == "REJECTED" and "above max = 80.0" in details["reason"], details
    aws.job("reboot-1", {"operation": "reboot"})
    status, details = aws.job_done("reboot-1")
    assert status == "REJECTED" and "unknown job document" in details["reason"], details
    cmd = json.dumps({"id": "c1", "command": "ping"}).encode()
    aws.on_loop(aws.cloud.publish, f"gatewayd/{DEVICE}/commands/", cmd)
    wait_for(lambda: any(r.get("id") == "c1" for r in aws.results), 20, "the ping's answer")
    assert [r["reason"] for r in aws.results if r["id"] == "c1"] == ["pong"]

    def setpoint_seen() -> bool:
        return any(
            r["point"] == "plc/setpoint" and r["value"] == pytest.approx(55.5)
            for r in list(aws.cloud.recorder.records)
        )

    wait_for(setpoint_seen, 10, "the written setpoint read back from the device")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    ids = sorted(aws.cloud.recorder.counts)
    assert ids == delivered_range(tmp_path / "buffer.sqlite"), "no reading lost"
    # AWS's limits were kept: nothing throttled, no connection closed for a topic or a payload.
    assert aws.cloud.throttled == 0 and aws.cloud.refused == []


def test_a_config_job_to_a_gateway_whose_remote_config_is_off_is_answered(
    aws: Aws, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """It stayed IN_PROGRESS for ever: the push went nowhere and no outcome came back."""
    text = _with_plc(aws, procs, tmp_path)
    text = text.replace("[remote_config]\n", "[remote_config]\nenabled = false\n", 1)
    assert "enabled = false" in text
    doc = tomllib.loads(text)
    log = tmp_path / "gw.log"
    start_gateway(write_config(tmp_path / "gw.toml", text), procs, log)
    aws.flowing()
    new = {**doc, "version": 2}
    aws.job("config-2", {"operation": "config", "document": new})
    status, details = aws.job_done("config-2")
    assert (status, details["status"], details["version"]) == ("FAILED", "rejected", "2"), details
    assert "[remote_config] enabled = false" in details["reason"], details
    assert "config_push_refused version=2" in log.read_text()
    wait_for(
        lambda: aws.reported().get("config", {}).get("status") == "rejected", 20, "in the shadow"
    )
