"""Azure IoT Hub profile: drain of a buffered backlog to the hub stand-in, beside raw paho.

    nice .venv/bin/python bench/bench_azure.py [--records 100000]

Both over TLS with SAS tokens to the same stand-in (hw-sim/cloud/azure.py, on its own thread
and event loop) in the same run. gatewayd: a Buffer file with N readings, the Uplink under the
azure-iot-hub profile's settings, until the stand-in has counted every id. Baseline: a plain
paho client publishing gatewayd's own batched messages from memory (no storage) at QoS 1 with
the same window of 20, until the last PUBACK. Both figures count from the connect (TLS
handshake, SAS token, CONNACK; gatewayd also GETs the twin). Also printed: the largest message
the hub saw (the profile's limit is 256 KB) and how many it refused as oversize (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from helpers import BrokerThread

from gatewayd.buffer import Buffer
from gatewayd.config import AuthConfig, BufferConfig, TlsConfig, UplinkConfig
from gatewayd.metrics import Metrics
from gatewayd.reading import Record
from gatewayd.uplink import Uplink
from gatewayd.uplink.credentials import sas_token
from gatewayd.uplink.payload import encode_json
from gatewayd_sim.cloud.azure import AzureHub, server_tls

HUB = "benchhub"
EVENTS = "devices/{device}/messages/events/$.ct=application%2Fjson&$.ce=utf-8"


def records(n: int) -> list[Record]:
    return [
        Record(f"boiler{i % 7}/flow_temp", 1_764_000_000_000 + i, 20.0 + (i % 1000) / 10)
        for i in range(n)
    ]


def uplink_cfg(port: int, ca: str, key: str, device: str) -> UplinkConfig:
    d = UplinkConfig()
    return UplinkConfig(
        profile="azure-iot-hub",
        channel="azure",
        hub=HUB,
        host="127.0.0.1",
        port=port,
        device=device,
        client_id="{device}",
        max_messages_per_s=1000.0,
        tls=TlsConfig(ca_file=ca),
        auth=AuthConfig(
            kind="sas",
            device_key=key,
            username=f"{HUB}.azure-devices.net/{{device}}/?api-version=2021-04-12",
        ),
        topics=dataclasses.replace(d.topics, events=EVENTS),
    )


async def fill(db: Path, n: int) -> None:
    buf = await Buffer.open(db, BufferConfig(max_bytes=4 * 1024**3))
    for start in range(0, n, 5000):
        await buf.append(records(min(5000, n - start)))
    await buf.close()


async def drain_gatewayd(work: Path, bt: BrokerThread, ca: str, key: str, n: int) -> float:
    hub: AzureHub = bt.broker
    buf = await Buffer.open(work / "backlog.sqlite", BufferConfig(max_bytes=4 * 1024**3))
    up = Uplink(uplink_cfg(bt.port, ca, key, "gw-bench"), buf, Metrics())
    before = hub.recorder.unique
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    while hub.recorder.unique - before < n:
        await asyncio.sleep(0.01)
    took = time.perf_counter() - t0
    await up.stop(1.0)
    await asyncio.wait_for(task, 10)
    await buf.close()
    return took


def drain_raw_paho(bt: BrokerThread, ca: str, key: str, payloads: list[bytes]) -> float:
    import base64
    import ssl

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    slots = threading.Semaphore(20)
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == len(payloads):
            done.set()

    device = "raw-bench"
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device)
    c.max_queued_messages_set(0)
    c.max_inflight_messages_set(20)
    token = sas_token(
        f"{HUB}.azure-devices.net/devices/{device}", base64.b64decode(key), int(time.time()) + 3600
    )
    c.username_pw_set(f"{HUB}.azure-devices.net/{device}/?api-version=2021-04-12", token)
    c.tls_set_context(ssl.create_default_context(cafile=ca))
    c.on_publish = on_publish
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    topic = EVENTS.format(device=device)
    t0 = time.perf_counter()  # from the connect, like gatewayd's figure (TLS, SAS, CONNACK)
    c.connect("127.0.0.1", bt.port)
    c.loop_start()
    connected.wait(10)
    for p in payloads:
        slots.acquire()
        c.publish(topic, p, qos=1)
    done.wait(600)
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    n = ap.parse_args().records
    with tempfile.TemporaryDirectory(prefix="bench-azure-") as tmp:
        work = Path(tmp)
        ctx, ca = server_tls(work / "tls")
        hub = AzureHub(HUB, tls=ctx)
        hub.recorder.keep_records = False
        key = hub.add_device("gw-bench")
        raw_key = hub.add_device("raw-bench")
        bt = BrokerThread(hub)
        try:
            asyncio.run(fill(work / "backlog.sqlite", n))
            payloads = _raw_payloads(work / "backlog.sqlite")
            gw_s = asyncio.run(drain_gatewayd(work, bt, ca, key, n))
            duplicates, unique, largest = hub.recorder.duplicates, hub.recorder.unique, hub.largest
            raw_s = drain_raw_paho(bt, ca, raw_key, payloads)
        finally:
            bt.stop()
        print(f"azure-iot-hub drain, {n} records, TLS + SAS, window 20, same stand-in:")
        print(f"  gatewayd (buffer file -> hub)     {gw_s:7.2f} s  {n / gw_s:9.0f} records/s")
        print(
            f"  raw paho (batches from memory)    {raw_s:7.2f} s  {n / raw_s:9.0f} records/s"
            f"  ({len(payloads)} messages)"
        )
        print(f"  ratio gatewayd/raw                {raw_s / gw_s:7.2f}")
        print(
            f"  gatewayd: {unique} unique ids at the hub, {duplicates} duplicates, largest message"
            f" {largest} bytes (limit 262144); oversize refused (both runs) {hub.oversize}"
        )


def _raw_payloads(db: Path) -> list[bytes]:
    """The stored readings as gatewayd's own batches (2,000 records), read straight from SQLite."""
    import sqlite3

    from gatewayd.buffer import Entry

    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT id, lane, body FROM records ORDER BY id").fetchall()
    entries = [Entry(i, lane, body) for i, lane, body in rows]
    return [encode_json(entries[s : s + 2000]) for s in range(0, len(entries), 2000)]


if __name__ == "__main__":
    main()
