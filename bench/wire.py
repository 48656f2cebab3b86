"""Bytes on the wire per reading, for each encoder: JSON (the default), compact, compact_zlib.

Live: the daemon at p1000's shape (10 devices x 100 registers every 1 s) with each encoder in
turn; payload bytes and messages from its own counters (`published_bytes`, `published_messages`,
`published_records`), and the MQTT PUBLISH framing added (fixed header, topic, packet id,
properties), TCP/IP headers not counted. The subscriber decodes every message
(gatewayd_sim.cloud.compact.decode), so each run also proves the cloud gets every id back.

Backlog: a drain's take (batch_max_records = 2,000 records of 10 devices) encoded in process, where
zlib has a large message to work on.
"""

from __future__ import annotations

import time
from typing import Any

from harness import LatencySubscriber, Mosquitto, cpu_ns_seconds, free_port, rig, wait_for
from mst import _scrape

ENCODERS = ("json", "compact", "compact_zlib")
TOPIC = "/devices/bench/events"  # what the bench's client-id template publishes to


def _framing(payload: int) -> int:
    """MQTT 3.1.1 PUBLISH QoS 1 around a payload: header, remaining length, topic, packet id."""
    rest = 2 + len(TOPIC) + 2 + payload
    varint = 1 if rest < 128 else 2 if rest < 16384 else 3 if rest < 2097152 else 4
    return 1 + varint + rest - payload


def live(encoder: str, seconds: float) -> dict[str, Any]:
    with rig() as r:
        r.start_devices(10, 100)
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub = LatencySubscriber(broker.port)
        mport = free_port()
        cfg = r.config(
            broker.port,
            100,
            1000,
            extra=f'encoder = "{encoder}"',
            tail=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n',
        )
        gw = r.start_gateway(cfg)
        wait_for(lambda: sub.unique > 0, 30, "first reading at the subscriber")
        time.sleep(2.0)
        m0, n0, c0 = _scrape(mport), sub.unique, cpu_ns_seconds(gw.pid)
        time.sleep(seconds)
        m1, n1, c1 = _scrape(mport), sub.unique, cpu_ns_seconds(gw.pid)
        dup = sub.duplicates
        sub.close()

    def d(name: str) -> float:
        return m1[f"gatewayd_{name}_total"] - m0[f"gatewayd_{name}_total"]

    records, payload, messages = (
        d("published_records"),
        d("published_bytes"),
        d("published_messages"),
    )
    per_msg = payload / max(messages, 1)
    return {
        "encoder": encoder,
        "records": records,
        "messages": messages,
        "payload_bytes_per_reading": payload / max(records, 1),
        "wire_bytes_per_reading": (payload + messages * _framing(int(per_msg))) / max(records, 1),
        "cpu_us_per_reading": 1e6 * (c1 - c0) / max(n1 - n0, 1),
        "received_unique": n1 - n0,
        "duplicates": dup,
    }


def backlog_take() -> dict[str, float]:
    """Payload bytes per reading of one 2,000-record take (10 devices x 100 points x 2 polls)."""
    from gatewayd.buffer import Entry
    from gatewayd.buffer.codec import encode_body
    from gatewayd.reading import Lane, Record
    from gatewayd.uplink import load_encoder

    ts = int(time.time() * 1000)
    entries = [
        Entry(
            (5 << 40) + 1 + i,
            int(Lane.TELEMETRY),
            encode_body(Record(f"dev{i // 100 % 10}/r{i % 100}", ts + 1000 * (i // 1000), i % 997)),
        )
        for i in range(2000)
    ]
    out = {}
    for name in ENCODERS:
        enc = load_encoder(name)
        t0 = time.perf_counter()
        payload = enc(entries)
        out[f"{name}_bytes_per_reading"] = len(payload) / len(entries)
        out[f"{name}_encode_us_per_reading"] = 1e6 * (time.perf_counter() - t0) / len(entries)
    return out


def wire(quick: bool) -> dict[str, Any]:
    seconds = 6.0 if quick else 30.0
    runs = [live(name, seconds) for name in ENCODERS]
    take = backlog_take()
    js = runs[0]["wire_bytes_per_reading"]
    rows = []
    for run in runs:
        name = run["encoder"]
        rows.append(
            (
                f"bytes on the wire per reading, {name} (p1000 live)",
                f"{run['wire_bytes_per_reading']:.1f} B (payload "
                f"{run['payload_bytes_per_reading']:.1f}), "
                f"{run['cpu_us_per_reading']:.1f} µs/reading",
                "compact ≪ JSON" if name != "json" else "",
                f"{js:.1f} B (json)" if name != "json" else "",
                f"{run['wire_bytes_per_reading'] / js:.2f}x" if name != "json" else "",
            )
        )
    for name in ENCODERS:
        rows.append(
            (
                f"payload per reading, {name} (a 2,000-record backlog take)",
                f"{take[f'{name}_bytes_per_reading']:.1f} B, encode "
                f"{take[f'{name}_encode_us_per_reading']:.2f} µs/reading",
                "",
                "",
                f"{take[f'{name}_bytes_per_reading'] / take['json_bytes_per_reading']:.2f}x",
            )
        )
    return {
        "live": runs,
        "backlog_take": take,
        "rows": rows,
        "summary": ", ".join(f"{r['encoder']} {r['wire_bytes_per_reading']:.1f} B" for r in runs),
    }
