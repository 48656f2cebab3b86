"""The AWS IoT Core stand-in, checked by AWS's own device SDK and by hostile raw clients."""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BrokerThread, wait_for
from sdk_venv import Flow, sdk_python

from gatewayd_sim.cloud.aws import AwsIotCore
from gatewayd_sim.cloud.mqtt_wire import CONNECT, PUBLISH, SUBSCRIBE, mqtt_str, packet

THING = "gw1"


@pytest.fixture(scope="session")
def aws_sdk() -> Path:
    return sdk_python("awsiotsdk", ["awsiotsdk>=1.22,<2"], "awsiot.iotshadow")


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[tuple[BrokerThread, AwsIotCore, Path, Path]]:
    cloud = AwsIotCore(tmp_path / "ca")
    cert, key = cloud.issue_thing(THING)
    bt = BrokerThread(cloud)
    try:
        yield bt, cloud, cert, key
    finally:
        bt.stop()


@pytest.mark.parametrize("protocol", ["mqtt3", "mqtt5"])
def test_sdk_connects_with_mtls_and_runs_shadow_and_jobs_flows(
    aws_sdk: Path, aws: tuple[BrokerThread, AwsIotCore, Path, Path], protocol: str
) -> None:
    bt, cloud, cert, key = aws
    ca = str(cloud.ca.ca_file)
    flow = Flow(aws_sdk, "aws_device.py", protocol, str(bt.port), ca, str(cert), str(key), THING)
    try:
        flow.expect_ready("delta")
        bt.loop.call_soon_threadsafe(
            cloud.update_shadow, THING, "config", {"desired": {"interval_s": 5}}
        )
        flow.go()
        flow.expect_ready("job")
        bt.loop.call_soon_threadsafe(
            cloud.create_job, THING, "j1", {"operation": "config", "interval_s": 7}
        )
        flow.go()
        r = flow.results()
    finally:
        flow.close()
    assert r["connect"] == {"session_present": False}
    last = cloud.auth_log[-1]
    assert last.accepted and last.level == {"mqtt3": 4, "mqtt5": 5}[protocol]
    assert r["get_before_any"] == {"code": 404, "message": "No shadow exists with name: 'config'"}
    assert r["update_reported"] == {"version": 1, "reported": {"interval_s": 10, "version": "1"}}
    assert r["deltas"] == [{"state": {"interval_s": 5}, "version": 2}]
    assert r["get_with_delta"]["delta"] == {"interval_s": 5}
    assert r["get_after_report"] == {"version": 3, "delta": None}
    assert r["stale_version"] == {"code": 409, "message": "Version conflict"}
    assert r["oversize"]["code"] == 413
    assert r["describe_next"] == {
        "job_id": "j1",
        "status": "QUEUED",
        "document": {"operation": "config", "interval_s": 7},
        "version": 1,
    }
    assert r["in_progress"] == {"status": "IN_PROGRESS", "version": 2}
    assert r["succeeded"] == {"status": "SUCCEEDED", "details": {"applied": "yes"}}
    assert r["update_terminal"]["code"] == "InvalidStateTransition"
    assert r["pending"] == {"in_progress": 0, "queued": 0}
    assert r["nexts"] == [{"job_id": "j1", "status": "QUEUED"}, None]
    assert r["telemetry_acked"] == 5
    assert sorted(cloud.recorder.counts) == [0, 1, 2, 3, 4]
    assert cloud.recorder.duplicates == 0 and cloud.recorder.malformed == 0
    assert cloud.refused == [] and cloud.throttled == 0


# -- raw clients: limits, policy, hostile peers -------------------------------------------------


class RawClient:
    """An MQTT 3.1.1 client over TLS that writes exactly the bytes a test gives it."""

    def __init__(self, port: int, ca: Path, cert: Path | None, key: Path | None) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.buf = b""

    def connect(self, client_id: str) -> int:
        body = mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60) + mqtt_str(client_id)
        self.sock.sendall(packet(CONNECT, 0, body))
        ptype, body = self.read()
        assert ptype == 2
        return body[1]

    def publish(self, topic: str, payload: bytes, pid: int = 0) -> bytes:
        body = mqtt_str(topic) + (struct.pack(">H", pid) if pid else b"") + payload
        return packet(PUBLISH, 0x02 if pid else 0, body)

    def subscribe(self, pattern: str) -> int:
        self.sock.sendall(packet(SUBSCRIBE, 0x02, struct.pack(">H", 1) + mqtt_str(pattern) + b"\1"))
        ptype, body = self.read()
        assert ptype == 9
        return body[2]

    def read(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next packet's (type, body); raises ConnectionError when the peer closed."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2 and not self.buf[1] & 0x80:
                n = self.buf[1]
                if len(self.buf) >= 2 + n:
                    ptype, body = self.buf[0] >> 4, self.buf[2 : 2 + n]
                    self.buf = self.buf[2 + n :]
                    return ptype, body
            try:
                chunk = self.sock.recv(65536)
            except ssl.SSLError as exc:
                raise ConnectionError(str(exc)) from exc
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def pubacks(self, quiet_s: float = 1.0) -> list[int]:
        """Packet ids of the PUBACKs that arrive until the line is quiet for quiet_s."""
        ids: list[int] = []
        while True:
            try:
                ptype, body = self.read(quiet_s)
            except TimeoutError:
                return ids
            if ptype == 4:
                ids.append(struct.unpack(">H", body)[0])

    def closed(self) -> bool:
        try:
            self.read(10)
        except ConnectionError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def _raw(aws: tuple[BrokerThread, AwsIotCore, Path, Path], with_cert: bool = True) -> RawClient:
    bt, cloud, cert, key = aws
    return RawClient(bt.port, cloud.ca.ca_file, cert if with_cert else None, key)


def test_client_id_must_be_the_thing_name_and_the_certificate_registered(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path], tmp_path: Path
) -> None:
    bt, cloud, _cert, _key = aws
    c = _raw(aws)
    assert c.connect("gw2") == 5
    assert "is not the thing name" in cloud.auth_log[-1].reason
    c = _raw(aws, with_cert=False)
    assert c.connect(THING) == 5
    assert cloud.auth_log[-1].reason == "no client certificate"
    # Signed by the CA but registered to no thing.
    stray_cert, stray_key = cloud.ca.issue("stray")
    c = RawClient(bt.port, cloud.ca.ca_file, stray_cert, stray_key)
    assert c.connect(THING) == 5
    assert cloud.auth_log[-1].reason == "certificate is not registered to a thing"
    assert _raw(aws).connect(THING) == 0


@pytest.mark.parametrize(
    ("topic", "payload_len", "kept"),
    [
        ("dt/gw1/a/b/c/d/e/f", 10, True),  # 7 slashes
        ("dt/gw1/a/b/c/d/e/f/g", 10, False),  # 8 slashes
        ("$aws/rules/ingest/dt/gw1/a/b/c/d/e/f", 10, True),  # Basic Ingest: prefix not counted
        ("$aws/rules/ingest/dt/gw1/a/b/c/d/e/f/g", 10, False),
        ("dt/gw2/telemetry", 10, False),  # another thing's topic: the policy refuses
        ("dt/gw1/telemetry", 128 * 1024, True),
        ("dt/gw1/telemetry", 128 * 1024 + 1, False),
    ],
)
def test_topic_policy_and_payload_limits(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path], topic: str, payload_len: int, kept: bool
) -> None:
    _bt, cloud, _c, _k = aws
    c = _raw(aws)
    assert c.connect(THING) == 0
    body = b'{"id": 1}'.ljust(payload_len)  # JSON may end in blanks
    c.sock.sendall(c.publish(topic, body, pid=7))
    if kept:
        assert c.pubacks() == [7]
        assert cloud.recorder.counts[1] == 1
    else:
        assert c.closed()
        assert cloud.recorder.messages == 0
        assert cloud.refused[-1][0] == THING


def test_basic_ingest_is_recorded_but_reaches_no_subscriber(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    _bt, cloud, _c, _k = aws
    c = _raw(aws)
    assert c.connect(THING) == 0
    assert c.subscribe("$aws/rules/ingest/dt/gw1/#") == 1
    assert c.subscribe("dt/gw1/#") == 1
    c.sock.sendall(c.publish("$aws/rules/ingest/dt/gw1/t", b'{"id": 1}', pid=1))
    c.sock.sendall(c.publish("dt/gw1/t", b'{"id": 2}', pid=2))
    types = []
    while True:
        try:
            types.append(c.read(1.0)[0])
        except TimeoutError:
            break
    assert sorted(types) == [PUBLISH, 4, 4]  # two PUBACKs, one delivery: the plain topic's
    assert dict(cloud.recorder.counts) == {1: 1, 2: 1}


def test_subscriptions_outside_the_policy_or_too_deep_are_refused(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    c = _raw(aws)
    assert c.connect(THING) == 0
    assert c.subscribe("$aws/things/gw1/shadow/name/+/update/delta") == 1
    assert c.subscribe("$aws/things/gw1/jobs/#") == 1
    assert c.subscribe("$aws/things/+/shadow/update/delta") == 0x80  # other things too
    assert c.subscribe("#") == 0x80
    assert c.subscribe("cmd/gw1/a/b/c/d/e/f/g") == 0x80


def test_over_100_publishes_a_second_are_throttled_not_disconnected(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    _bt, cloud, _c, _k = aws
    now = [1000.0]
    cloud.clock = lambda: now[0]  # the whole burst within one second, however slow the machine
    c = _raw(aws)
    assert c.connect(THING) == 0
    burst = b"".join(
        c.publish("dt/gw1/t", json.dumps({"id": i}).encode(), pid=i + 1) for i in range(150)
    )
    c.sock.sendall(burst)
    acked = c.pubacks()
    assert len(acked) == 100 and cloud.throttled == 50
    assert cloud.recorder.unique == 100
    now[0] += 1.0  # the next second: the window has room again
    c.sock.sendall(c.publish("dt/gw1/t", b'{"id": 500}', pid=501))
    assert c.pubacks() == [501]


def test_over_100_unacknowledged_publishes_are_dropped(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    _bt, cloud, _c, _k = aws
    cloud.acks_enabled = False
    cloud.max_publishes_per_s = 10_000  # only the in-flight cap may drop
    c = _raw(aws)
    assert c.connect(THING) == 0
    c.sock.sendall(
        b"".join(
            c.publish("dt/gw1/t", json.dumps({"id": i}).encode(), pid=i + 1) for i in range(120)
        )
    )
    wait_for(lambda: cloud.throttled == 20, 10, "20 publishes over the in-flight cap dropped")
    assert cloud.recorder.unique == 100
    assert c.pubacks() == []


def test_hostile_peers_leave_the_stand_in_serving_and_counting_nothing(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    bt, cloud, _c, _k = aws
    # Garbage before TLS, garbage inside TLS, a truncated CONNECT, a publish cut off mid-body.
    with socket.create_connection(("127.0.0.1", bt.port), timeout=10) as s:
        s.sendall(b"\x10\xff\xff\xff\xff\x7fgarbage" * 10)
    c = _raw(aws)
    c.sock.sendall(b"\xde\xad\xbe\xef" * 100)
    assert c.closed()
    c = _raw(aws)
    c.sock.sendall(packet(CONNECT, 0, mqtt_str("MQTT") + bytes([4]))[:-1])
    c.close()  # gone mid-CONNECT
    c = _raw(aws)
    c.sock.sendall(packet(CONNECT, 0, mqtt_str("MQTT") + bytes([4])))  # framed, but cut short
    assert c.closed()
    c = _raw(aws)
    assert c.connect(THING) == 0
    whole = c.publish("dt/gw1/t", b'{"id": 99}', pid=3)
    c.sock.sendall(whole[:-4])
    c.close()
    c = _raw(aws)
    assert c.connect(THING) == 0
    c.sock.sendall(packet(PUBLISH, 0x02, mqtt_str("dt/gw1/t")[:1]))  # topic length, no topic
    assert c.closed()
    # Still serving, and the truncated records counted nowhere.
    c = _raw(aws)
    assert c.connect(THING) == 0
    c.sock.sendall(c.publish("dt/gw1/t", b'{"id": 1}', pid=1))
    assert c.pubacks() == [1]
    assert dict(cloud.recorder.counts) == {1: 1}
    assert cloud.recorder.malformed == 0 and cloud.throttled == 0


def test_cli_serves_things_updates_a_shadow_and_creates_a_job(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    certs = tmp_path / "ca"
    sim = [sys.executable, "-m", "gatewayd_sim", "aws"]
    out = subprocess.run(
        [*sim, "issue", "--thing", THING, "--certs", str(certs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    cert, key = certs / f"{THING}.pem", certs / f"{THING}.key"
    assert f"--thing {THING}={cert}" in out.stdout
    serve = subprocess.Popen(
        [*sim, "--certs", str(certs), "--thing", f"{THING}={cert}", "--admin-password", "adm"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        port = int(re.search(r":(\d+),", serve.stdout.readline()).group(1))  # type: ignore[union-attr]
        got: list[tuple[str, Any]] = []
        dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=THING)
        dev.tls_set(ca_certs=str(certs / "ca.pem"), certfile=str(cert), keyfile=str(key))
        dev.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
        subscribed = threading.Event()
        dev.on_subscribe = lambda *a: subscribed.set()
        dev.on_connect = lambda c, *a: c.subscribe(
            [
                ("$aws/things/gw1/shadow/name/config/update/delta", 1),
                ("$aws/things/gw1/jobs/notify-next", 1),
            ]
        )
        dev.connect("localhost", port)
        dev.loop_start()
        try:
            assert subscribed.wait(10)
            (tmp_path / "desired.json").write_text('{"interval_s": 30}')
            (tmp_path / "job.json").write_text('{"operation": "config", "url": "x"}')

            def cli(*args: str) -> str:
                done = subprocess.run(
                    [
                        *sim,
                        *args,
                        "--to",
                        THING,
                        "--port",
                        str(port),
                        "--certs",
                        str(certs),
                        "--admin-password",
                        "adm",
                        "--host",
                        "localhost",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert done.returncode == 0, done.stderr
                return done.stdout

            assert "shadow/name/config/update" in cli(
                "update-shadow", str(tmp_path / "desired.json")
            )
            wait_for(lambda: len(got) == 1, 10, "the shadow delta")
            cli("create-job", str(tmp_path / "job.json"), "--job-id", "j7")
            wait_for(lambda: len(got) == 2, 10, "the job notification")
        finally:
            dev.loop_stop()
            dev.disconnect()
        (t1, delta), (t2, nxt) = got
        assert t1.endswith("/update/delta") and delta["state"] == {"interval_s": 30}
        assert t2.endswith("/notify-next") and nxt["execution"]["jobId"] == "j7"
        assert nxt["execution"]["jobDocument"] == {"operation": "config", "url": "x"}
    finally:
        serve.kill()
        serve.wait(5)


def test_job_notifications_follow_the_pending_list_and_the_next_job(
    aws: tuple[BrokerThread, AwsIotCore, Path, Path],
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    bt, cloud, cert, key = aws
    got: list[tuple[str, Any]] = []
    subscribed = threading.Event()
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=THING)
    dev.tls_set(ca_certs=str(cloud.ca.ca_file), certfile=str(cert), keyfile=str(key))
    dev.on_message = lambda c, u, m: got.append((m.topic.rsplit("/", 1)[1], json.loads(m.payload)))
    dev.on_subscribe = lambda *a: subscribed.set()
    dev.on_connect = lambda c, *a: c.subscribe(
        [("$aws/things/gw1/jobs/notify", 1), ("$aws/things/gw1/jobs/notify-next", 1)]
    )
    dev.connect("localhost", bt.port)
    dev.loop_start()

    def step(fn: Any, *args: Any, expect: int) -> list[tuple[str, Any]]:
        before = len(got)
        bt.loop.call_soon_threadsafe(fn, *args)
        wait_for(lambda: len(got) >= before + expect, 10, f"{expect} notifications")
        time.sleep(0.3)  # nothing more may follow
        return got[before:]

    def update(job: str, status: str) -> None:
        dev.publish(f"$aws/things/gw1/jobs/{job}/update", json.dumps({"status": status}), qos=1)

    try:
        assert subscribed.wait(10)
        first = step(cloud.create_job, THING, "j1", {"n": 1}, expect=2)
        assert [t for t, _ in first] == ["notify", "notify-next"]
        assert first[1][1]["execution"]["jobId"] == "j1"
        second = step(cloud.create_job, THING, "j2", {"n": 2}, expect=1)
        assert [t for t, _ in second] == ["notify"]  # j1 is still next
        assert [j["jobId"] for j in second[0][1]["jobs"]["QUEUED"]] == ["j1", "j2"]
        before = len(got)
        update("j1", "IN_PROGRESS")
        wait_for(lambda: cloud.jobs[THING][0].status == "IN_PROGRESS", 10, "j1 in progress")
        time.sleep(0.3)
        assert got[before:] == []  # still pending, still next
        done = step(update, "j1", "SUCCEEDED", expect=2)
        assert sorted(t for t, _ in done) == ["notify", "notify-next"]
        assert dict(done)["notify-next"]["execution"]["jobId"] == "j2"
        last = step(update, "j2", "REJECTED", expect=2)
        assert dict(last)["notify"]["jobs"] == {}
        assert "execution" not in dict(last)["notify-next"]
    finally:
        dev.loop_stop()
        dev.disconnect()
