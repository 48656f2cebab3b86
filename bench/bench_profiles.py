"""Per cloud profile: drain rate of a backlog vs raw paho in the same run, and its limits kept.

Targets (each started here, on loopback): cloud-iot-core and clearblade against the cloud
stand-in (device JWT), aws-iot-core against the AWS IoT Core stand-in (mTLS with the thing's
certificate; its 100 publishes/s lifted for the raw baseline only, which sends one reading a
message), thingsboard against the ThingsBoard stand-in (access token, gateway API, encoder
"thingsboard"), and profile = "mqtt" against mosquitto, NATS (MQTT + JetStream) and RabbitMQ
(MQTT + OAuth 2 JWT), where installed (a missing broker is reported, not fatal).

For each: the Uplink with the profile's defaults drains a pre-filled buffer of N readings from
its CONNACK to the last ack (readings/s); the baseline is a raw paho QoS 1 loop publishing the
same N readings one message each, with at most the same in-flight window, on the same broker with
the same credentials, just before. A subscriber (or the stand-in itself) sees every message of
the drain: the largest message, the peak messages per second (1-s buckets) and the in-flight
window (sampled in the drain) are printed beside the profile's caps (the cloud's own where it
has them: AWS IoT Core's 100 publishes/s counts every publish of the connection, state and
channel included, and 100 unacknowledged; a publish it throttled is reported), and the bytes per
reading on the wire (payloads only) of the baseline and of the drain. The ThingsBoard baseline
publishes each reading as a gateway telemetry message of its own (`{"plc": [{"ts", "values":
{"p3": v, "id": i}}]}`); its stand-in counts the drain's records by their `_id`, printed as
ids/lost.

    .venv/bin/python bench/bench_profiles.py [--quick] [--readings N] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
import paho.mqtt.client as mqtt
from bench_uplink import fill, records
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.buffer.codec import encode_body
from gatewayd.config import AuthConfig, TlsConfig, TopicsConfig, UplinkConfig
from gatewayd.config.profiles import PROFILES, limits_of
from gatewayd.metrics import Metrics
from gatewayd.reading import Record
from gatewayd.uplink import Uplink
from gatewayd.uplink.device_jwt import generate_key, load_private_key, mint_jwt

DEVICE = "bench"


@dataclasses.dataclass
class Target:
    name: str
    port: int
    cfg: UplinkConfig
    raw_auth: tuple[str, str | None] | None  # username, password for the raw paho baseline
    raw_client_id: str
    seen: list[tuple[float, int]]  # (monotonic, bytes) of each events message at the broker
    raw_tls: tuple[str, str, str] | None = None  # CA, client certificate, key (mTLS)
    # Around the raw baseline: lift a cloud's rate cap, then put it back for the drain.
    lift: Callable[[bool], None] | None = None
    throttled: Callable[[], int] = lambda: 0  # publishes the cloud dropped over its limits
    raw_body: Callable[[int, Record], bytes] = lambda i, r: (
        f'{{"id":{i},{encode_body(r)[1:]}'.encode()
    )
    check: Callable[[int], str] | None = None  # after the drain of N: what the cloud counted


def _cfg(port: int, profile: str, **changes: Any) -> UplinkConfig:
    p = PROFILES[profile]
    base = UplinkConfig(
        host="127.0.0.1",
        port=port,
        profile=profile,
        project="p1",
        region="r1",
        registry="reg1",
        device=DEVICE,
        client_id=p.client_id,
        batch_max_bytes=p.batch_max_bytes,
        batch_max_records=p.batch_max_records or UplinkConfig().batch_max_records,
        tls=TlsConfig(enabled=False),
        auth=AuthConfig(kind="none"),
    )
    return dataclasses.replace(base, **changes)


def _subscribe(port: int, topic: str, seen: list[tuple[float, int]], **auth: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{port}")
    if auth:
        c.username_pw_set(auth["username"], auth["password"])
    ready = threading.Event()
    c.on_connect = lambda cl, *a: cl.subscribe(topic, 1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, u, m: seen.append((time.monotonic(), len(m.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not ready.wait(20):
        raise RuntimeError(f"subscriber on {port}: no SUBACK")
    return c


@contextmanager
def standin(work: Path, profile: str) -> Iterator[Target]:
    from helpers import BrokerThread

    from gatewayd_sim.cloud import Broker, Registry

    registry = Registry("p1", "r1", "reg1")
    key = work / f"{profile}.key"
    registry.add(DEVICE, generate_key(key, "ES256"))
    broker = Broker(registry)
    seen: list[tuple[float, int]] = []
    broker.on_message = lambda topic, payload: (
        seen.append((time.monotonic(), len(payload))) if topic.endswith("/events") else None
    )
    bt = BrokerThread(broker)
    try:
        auth = AuthConfig(kind="jwt", private_key=str(key), audience="p1")
        cfg = _cfg(bt.port, profile, auth=auth)
        token = mint_jwt(load_private_key(key, "ES256"), "ES256", "p1", 3600)
        client_id = cfg.client_id.format(**cfg.template_values())
        yield Target(f"{profile} (stand-in)", bt.port, cfg, ("unused", token), client_id, seen)
    finally:
        bt.stop()


TB_TOKEN = "BENCH_GATEWAY_TOKEN"


def _tb_body(i: int, r: Record) -> bytes:
    device, _, key = r.point.partition("/")
    entry = {"ts": r.ts_ms, "values": {key: r.value, "id": -1 - i}}  # < 0: not a buffer id
    return json.dumps({device: [entry]}, separators=(",", ":")).encode()


@contextmanager
def thingsboard(work: Path) -> Iterator[Target]:
    from helpers import BrokerThread

    from gatewayd_sim.cloud.thingsboard import ThingsBoard

    cloud = ThingsBoard()
    cloud.recorder.keep_records = False
    cloud.add_device(DEVICE, TB_TOKEN, gateway=True)
    seen: list[tuple[float, int]] = []
    cloud.on_message = lambda topic, payload: (
        seen.append((time.monotonic(), len(payload))) if topic == "v1/gateway/telemetry" else None
    )
    bt = BrokerThread(cloud)

    def check(n: int) -> str:
        ids = [i for i in list(cloud.recorder.counts) if i > 0]
        lost, bad = n - len(ids), cloud.recorder.malformed
        return f"ids {len(ids)}/{n}, lost {lost}, malformed {bad}, oversize {cloud.oversize}"

    try:
        p = PROFILES["thingsboard"]
        cfg = _cfg(
            bt.port,
            "thingsboard",
            channel=p.channel,
            encoder=p.encoder,
            topics=p.topics,
            auth=AuthConfig(kind="access_token", access_token=TB_TOKEN),
        )
        yield Target(
            "thingsboard (stand-in)",
            bt.port,
            cfg,
            (TB_TOKEN, None),
            "raw",
            seen,
            raw_body=_tb_body,
            check=check,
        )
    finally:
        bt.stop()


@contextmanager
def aws(work: Path) -> Iterator[Target]:
    from helpers import BrokerThread

    from gatewayd_sim.cloud.aws import MAX_PUBLISHES_PER_S, AwsIotCore

    cloud = AwsIotCore(work / "aws")
    cert, key = cloud.issue_thing(DEVICE)
    seen: list[tuple[float, int]] = []
    # Every publish of the connection counts against AWS's 100/s, not only the telemetry.
    cloud.on_message = lambda topic, payload: seen.append((time.monotonic(), len(payload)))

    def lift(on: bool) -> None:
        cloud.max_publishes_per_s = 10**9 if on else MAX_PUBLISHES_PER_S

    bt = BrokerThread(cloud)
    try:
        p = PROFILES["aws-iot-core"]
        tls = TlsConfig(ca_file=str(cloud.ca.ca_file), cert_file=str(cert), key_file=str(key))
        cfg = _cfg(
            bt.port,
            "aws-iot-core",
            client_id=p.client_id,
            channel=p.channel,
            topics=p.topics,
            max_messages_per_s=p.max_messages_per_s,
            tls=tls,
            auth=AuthConfig(kind="x509"),
        )
        raw_tls = (str(cloud.ca.ca_file), str(cert), str(key))
        yield Target(
            "aws-iot-core (stand-in)",
            bt.port,
            cfg,
            None,
            DEVICE,
            seen,
            raw_tls,
            lift,
            lambda: cloud.throttled,
        )
    finally:
        bt.stop()


@contextmanager
def mosquitto(work: Path) -> Iterator[Target]:
    from gatewayd_sim.procs import Mosquitto

    m = Mosquitto(work / "mosquitto")
    m.start()
    seen: list[tuple[float, int]] = []
    sub = _subscribe(m.port, f"/devices/{DEVICE}/events", seen)
    try:
        yield Target("mqtt / mosquitto", m.port, _cfg(m.port, "mqtt"), None, "raw", seen)
    finally:
        sub.loop_stop()
        m.kill()


@contextmanager
def nats(work: Path) -> Iterator[Target]:
    from brokers import Nats

    n = Nats(work / "nats")
    n.start()
    seen: list[tuple[float, int]] = []
    sub = _subscribe(n.port, f"/devices/{DEVICE}/events", seen)
    try:
        cfg = _cfg(n.port, "mqtt", broker="nats", protocol="3.1.1")
        yield Target("mqtt / NATS", n.port, cfg, None, "raw", seen)
    finally:
        sub.loop_stop()
        n.stop()


@contextmanager
def rabbitmq(work: Path) -> Iterator[Target]:
    from brokers import RESOURCE, RabbitMq, scopes

    key = work / "rabbit.key"
    admin = work / "admin.key"
    pems = {"gw": generate_key(key, "ES256"), "admin": generate_key(admin, "ES256")}
    r = RabbitMq(work / "rabbitmq", pems).start()
    everything = f"{RESOURCE}.read:*/*/* {RESOURCE}.write:*/*/* {RESOURCE}.configure:*/*"
    sub_token = mint_jwt(
        load_private_key(admin, "ES256"), "ES256", RESOURCE, 3600, "admin", {"scope": everything}
    )
    seen: list[tuple[float, int]] = []
    sub = _subscribe(r.port, f"devices/{DEVICE}/events", seen, username="s", password=sub_token)
    try:
        claims = (("scope", scopes()), ("sub", "{device}"))
        auth = AuthConfig(
            kind="jwt",
            private_key=str(key),
            audience=RESOURCE,
            key_id="gw",
            username="{device}",
            claims=claims,
        )
        topics = TopicsConfig(
            events="devices/{device}/events",
            state="devices/{device}/state",
            config="devices/{device}/config",
            commands="devices/{device}/commands/#",
            command_results="devices/{device}/events/command-results",
        )
        cfg = _cfg(r.port, "mqtt", broker="rabbitmq", auth=auth, topics=topics)
        raw_scope = " ".join(s.replace("{device}", DEVICE) for s in [scopes()])
        raw_token = mint_jwt(
            load_private_key(key, "ES256"), "ES256", RESOURCE, 3600, "gw", {"scope": raw_scope}
        )
        yield Target("mqtt / RabbitMQ", r.port, cfg, (DEVICE, raw_token), "raw", seen)
    finally:
        sub.loop_stop()
        r.stop()


def raw_paho(t: Target, n: int) -> tuple[float, float]:
    """(readings/s, payload bytes per reading) of a plain paho QoS 1 loop, one reading per
    message, `inflight_window` open."""
    bodies = [t.raw_body(i, r) for i, r in enumerate(records(n))]
    slots = threading.Semaphore(t.cfg.inflight_window)
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == len(bodies):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=t.raw_client_id)
    if t.raw_auth is not None:
        c.username_pw_set(*t.raw_auth)
    if t.raw_tls is not None:
        ca, cert, key = t.raw_tls
        c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", t.port)
    c.loop_start()
    if not connected.wait(20):
        raise RuntimeError(f"{t.name}: raw paho not connected")
    topic = t.cfg.topics.events.format(**t.cfg.template_values())
    t0 = time.perf_counter()
    for b in bodies:
        slots.acquire()
        c.publish(topic, b, qos=1)
    if not done.wait(600):
        raise RuntimeError(f"{t.name}: raw paho: {acked} of {n} acked")
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / took, sum(len(b) for b in bodies) / n


async def drain(work: Path, t: Target, n: int) -> tuple[float, int]:
    """(readings/s, largest in-flight window seen) of the Uplink emptying a pre-filled buffer."""
    buf = await fill(work / f"drain-{t.port}.sqlite", n)
    metrics = Metrics()
    up = Uplink(t.cfg, buf, metrics, key_dir=work)
    task = asyncio.get_running_loop().create_task(up.run())
    while not up.connected:
        if task.done():
            task.result()
        await asyncio.sleep(0.001)
    t.seen.clear()
    inflight = 0
    t0 = time.perf_counter()
    while metrics.total("acked_records") < n:
        inflight = max(inflight, len(up.window))
        await asyncio.sleep(0.002)
    wall = time.perf_counter() - t0
    await up.stop()
    await task
    await buf.close()
    return n / wall, inflight


def _peak_rate(seen: list[tuple[float, int]]) -> int:
    buckets = Counter(int(ts) for ts, _ in seen)
    return max(buckets.values(), default=0)


TARGETS: dict[str, Callable[[Path], Any]] = {
    "cloud-iot-core": lambda w: standin(w, "cloud-iot-core"),
    "clearblade": lambda w: standin(w, "clearblade"),
    "aws-iot-core": aws,
    "thingsboard": thingsboard,
    "mosquitto": mosquitto,
    "nats": nats,
    "rabbitmq": rabbitmq,
}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10k readings per target (< 2 min)")
    p.add_argument("--readings", type=int, default=None)
    p.add_argument("--only", action="append", choices=sorted(TARGETS), default=None)
    a = p.parse_args()
    n = a.readings or (10_000 if a.quick else 100_000)
    print(
        f"profile bench: {n} readings per target, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, loopback"
    )
    head = (
        f"{'target':26} {'raw paho/s':>10} {'uplink/s':>9} {'x raw':>6} "
        f"{'max msg B':>10} {'limit':>7} {'peak msg/s':>10} {'cap':>5} {'inflight':>8} {'cap':>4}"
        f" {'B/rdg raw':>9} {'B/rdg':>6}"
    )
    print(head)
    print("-" * len(head))
    for name in a.only or list(TARGETS):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            work = Path(tmp)
            try:
                cm = TARGETS[name](work)
                t = cm.__enter__()
            except BaseException as exc:  # a broker not installed here: say so, go on
                print(f"{name:26} not run: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            try:
                if t.lift is not None:
                    t.lift(True)
                base, raw_bytes = await asyncio.to_thread(raw_paho, t, n)
                if t.lift is not None:
                    t.lift(False)
                throttled = t.throttled()
                rate, inflight = await drain(work, t, n)
                await asyncio.sleep(0.5)  # the subscriber's last messages
                throttled = t.throttled() - throttled
                limits = limits_of(t.cfg)
                biggest = max((b for _, b in t.seen), default=0)
                limit = limits.max_payload_bytes or t.cfg.batch_max_bytes
                # The cloud's own caps where it has them (AWS: every publish, 100 in flight).
                rate_cap = limits.max_publishes_per_s or t.cfg.max_messages_per_s
                inflight_cap = limits.max_inflight or t.cfg.inflight_window
                ok = (
                    biggest <= limit
                    and _peak_rate(t.seen) <= (limits.max_publishes_per_s or rate_cap * 1.1)
                    and inflight <= min(inflight_cap, t.cfg.inflight_window)
                    and throttled == 0
                )
                print(
                    f"{t.name:26} {base:10.0f} {rate:9.0f} {rate / base:6.2f} {biggest:10d} "
                    f"{limit:7d} {_peak_rate(t.seen):10d} {rate_cap:5.0f} "
                    f"{inflight:8d} {inflight_cap:4d} {raw_bytes:9.1f} "
                    f"{sum(b for _, b in t.seen) / n:6.1f}  {'ok' if ok else 'LIMIT BROKEN'}"
                    + (f" ({throttled} throttled)" if throttled else "")
                    + (f"  {t.check(n)}" if t.check is not None else "")
                )
            finally:
                cm.__exit__(None, None, None)
    if "thingsboard" in (a.only or TARGETS):
        print(polled_bytes())


def polled_bytes(points: int = 50, polls: int = 16) -> str:
    """Bytes per reading of one take when a poll's points share their timestamp (as polled)."""
    from gatewayd.buffer import Entry
    from gatewayd.uplink.payload import encode_json
    from gatewayd.uplink.payload_thingsboard import encode_thingsboard

    recs = [
        Record(f"plc/p{i}", 1_764_000_000_000 + 1000 * poll, 20.0 + i / 10)
        for poll in range(polls)
        for i in range(points)
    ]
    entries = [Entry((1 << 40) + i, 2, encode_body(r)) for i, r in enumerate(recs)]
    n = len(entries)
    return (
        f"{points} points per poll, one take of {n}: thingsboard "
        f"{len(encode_thingsboard(entries)) / n:.1f} B/reading vs json "
        f"{len(encode_json(entries)) / n:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
