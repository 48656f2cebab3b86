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
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from tls_certs import TestCA

from gatewayd.buffer import Buffer
from gatewayd.config import AuthConfig, BufferConfig, TlsConfig, UplinkConfig
from gatewayd.metrics import Metrics
from gatewayd.reading import Record
from gatewayd.uplink import Uplink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return time.monotonic()
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"mosquitto did not listen on {port}")


class Mosq:
    def __init__(self, work: Path, tls: TestCA | None = None) -> None:
        self.port = free_port()
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "user root",
        ]
        if tls is not None:
            cert, key = tls.issue("broker", server=True)
            lines += [f"cafile {tls.ca_file}", f"certfile {cert}", f"keyfile {key}"]
        self.conf = work / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> float:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if binary is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from gatewayd.buffer.codec import encode_body

    bodies = [f'{{"id":{i},{encode_body(r)[1:]}'.encode() for i, r in enumerate(records(n))]
    done = threading.Event()
    acked = 0
    # The same in-flight window as the uplink's default. Left to paho's own queue (publish all,
    # then wait), paho 2.2 with loop_start stalled here after ~67k queued messages.
    window = threading.Semaphore(UplinkConfig().inflight_window)

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-paho")
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for b in bodies:
        window.acquire()
        c.publish("/devices/bench/events", b, qos=1)
    done.wait(600)
    wall = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / wall


async def outage(work: Path, mosq: Mosq, outage_s: float) -> float:
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
        ca = TestCA(work / "ca")
        plain, tls = Mosq(work), Mosq(work, tls=ca)
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
