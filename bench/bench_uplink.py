"""Uplink drain rate, TLS cost and time to first PUBACK after a broker outage, vs raw paho.

All against a real mosquitto started here on free ports (plain and TLS with a throw-away CA):
- drain: a buffer pre-filled with N readings published by the Uplink with its defaults (batches,
  in-flight window, 100 msg/s pacing) from its CONNACK until every record is acked, in readings/s
  and CPU µs per reading (this process: encoder, paho, SQLite take/ack);
- baseline: a raw paho QoS 1 loop publishing the same N readings one message each (at most 20
  unacknowledged, like the uplink), until every PUBACK is in — the same run, the same broker;
- TLS: the drain again over TLS; cost as the ratio of rates and of CPU per reading;
- outage: mosquitto killed, restarted after `--outage` s; time from the broker listening again
  to the uplink's first PUBACK, with the default backoff (base 1 s, cap 10 s).

    .venv/bin/python bench/bench_uplink.py [--quick] [--readings N] [--outage S] [--trials K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gatewayd.buffer import Buffer
from gatewayd.config import AuthConfig, BufferConfig, TlsConfig, UplinkConfig
from gatewayd.metrics import Metrics
from gatewayd.reading import Record
from gatewayd.uplink import Uplink
from gatewayd_sim.cloud.certs import CertificateAuthority
from gatewayd_sim.procs import Mosquitto


def mosquitto(work: Path, tls: CertificateAuthority | None = None) -> Mosquitto:
    """A started mosquitto on a free port, with a TLS listener when `tls` is given."""
    extra: list[str] = []
    if tls is not None:
        cert, key = tls.issue("broker", server=True)
        extra = [f"cafile {tls.ca_file}", f"certfile {cert}", f"keyfile {key}"]
    m = Mosquitto(work / f"mosquitto-{time.monotonic_ns()}", extra=extra)
    m.start()
    return m


def records(n: int) -> list[Record]:
    now = int(time.time() * 1000)
    return [Record(f"plc/p{i % 50}", now + i, 20.0 + (i % 1000) / 10) for i in range(n)]


async def fill(path: Path, n: int) -> Buffer:
    buf = await Buffer.open(path, BufferConfig(max_bytes=1 << 30))
    recs = records(n)
    for i in range(0, n, 5000):
        await buf.append(recs[i : i + 5000])
    return buf


def cfg(port: int, tls: TlsConfig) -> UplinkConfig:
    return UplinkConfig(
        host="127.0.0.1",
        port=port,
        project="p",
        region="r",
        registry="g",
        device="bench",
        tls=tls,
        auth=AuthConfig(kind="none"),
    )


async def drain(work: Path, n: int, port: int, tls: TlsConfig) -> tuple[float, float]:
    """(readings/s, CPU µs per reading) of the Uplink emptying a pre-filled buffer."""
    buf = await fill(work / f"drain-{port}.sqlite", n)
    metrics = Metrics()
    up = Uplink(cfg(port, tls), buf, metrics)
    task = asyncio.get_running_loop().create_task(up.run())
    # Timed from the CONNACK: the steady state, not the (TLS) connect, which is once per session.
    while not up.connected:
        await asyncio.sleep(0.001)
    t0, c0 = time.perf_counter(), time.process_time()
    while metrics.total("acked_records") < n:
        await asyncio.sleep(0.01)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await up.stop()
    await task
    await buf.close()
    return n / wall, cpu / n * 1e6


def raw_paho(n: int, port: int) -> float:
    """readings/s of a plain paho QoS 1 loop, one reading per message."""
    from gatewayd.buffer.codec import encode_body

    bodies = [f'{{"id":{i},{encode_body(r)[1:]}'.encode() for i, r in enumerate(records(n))]
    return n / publish_loop(port, bodies, UplinkConfig().inflight_window)


def publish_loop(port: int, payloads: list[bytes], window: int) -> float:
    """Seconds for a plain paho client to publish `payloads` at QoS 1 until the last PUBACK,
    with at most `window` unacknowledged (the uplink's default window, for a fair comparison).

    The window is kept here, not by paho's queue: paho rescans its whole queue on every PUBACK,
    and with loop_start it stalled after ~67k queued messages.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    slots = threading.Semaphore(window)
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        slots.release()
        if acked == len(payloads):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-paho")
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for p in payloads:
        slots.acquire()
        c.publish("/devices/bench/events", p, qos=1)
    done.wait(600)
    took = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return took


async def outage(work: Path, mosq: Mosquitto, outage_s: float) -> float:
    """Seconds from the broker listening again to the first PUBACK after a restart."""
    buf = await fill(work / f"outage-{time.monotonic_ns()}.sqlite", 1000)
    up = Uplink(cfg(mosq.port, TlsConfig(enabled=False)), buf, Metrics())
    task = asyncio.get_running_loop().create_task(up.run())
    while up.first_puback_at is None:
        await asyncio.sleep(0.01)
    mosq.kill()
    while up.connected:
        await asyncio.sleep(0.01)
    await asyncio.sleep(outage_s)
    await buf.append(records(10))  # something to send when it is back
    back = mosq.start()
    while not up.connected or up.first_puback_at is None:
        await asyncio.sleep(0.005)
    first = up.first_puback_at - back
    await up.stop()
    await task
    await buf.close()
    return first


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="30k readings, one 5 s outage (< 60 s)")
    p.add_argument("--readings", type=int, default=None)
    p.add_argument("--outage", type=float, default=None, help="seconds (default 20; quick 5)")
    p.add_argument("--trials", type=int, default=None, help="outages (default 3; quick 1)")
    p.add_argument("--rounds", type=int, default=3, help="plain/TLS drain pairs (medians)")
    a = p.parse_args()
    n = a.readings or (30_000 if a.quick else 100_000)
    outage_s = a.outage if a.outage is not None else (5.0 if a.quick else 20.0)
    trials = a.trials or (1 if a.quick else 3)
    print(
        f"uplink bench: {n} readings, {a.rounds} rounds, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, mosquitto on loopback"
    )
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
        work = Path(tmp)
        ca = CertificateAuthority(work / "ca")
        plain, tls = mosquitto(work), mosquitto(work, tls=ca)
        try:
            base = raw_paho(n, plain.port)
            # Alternate plain and TLS runs and take medians: the machine may be shared.
            runs = [
                (
                    await drain(work, n, plain.port, TlsConfig(enabled=False)),
                    await drain(work, n, tls.port, TlsConfig(ca_file=str(ca.ca_file))),
                )
                for _ in range(a.rounds)
            ]
            rate = statistics.median(r[0][0] for r in runs)
            cpu = statistics.median(r[0][1] for r in runs)
            t_rate = statistics.median(r[1][0] for r in runs)
            t_cpu = statistics.median(r[1][1] for r in runs)
            print(f"raw paho QoS 1, 1 reading/msg : {base:9.0f} readings/s")
            print(
                f"uplink drain (defaults)       : {rate:9.0f} readings/s, {cpu:5.1f} µs CPU/reading"
                f"  -> {rate / base:.2f}x raw paho (goal >= 1.0)"
            )
            print(
                f"uplink drain over TLS         : {t_rate:9.0f} readings/s, {t_cpu:5.1f} µs "
                f"CPU/reading -> {1 - t_rate / rate:.0%} slower, {t_cpu / cpu - 1:+.0%} CPU "
                "(goal: cost <= 15 %)"
            )
            firsts = [await outage(work, plain, outage_s) for _ in range(trials)]
            each = ", ".join(f"{f:.2f}" for f in firsts)
            print(
                f"broker back after {outage_s:g} s outage -> first PUBACK: median "
                f"{statistics.median(firsts):.2f} s over {trials} ({each}) (goal <= 5 s median)"
            )
        finally:
            plain.kill()
            tls.kill()


if __name__ == "__main__":
    asyncio.run(main())
