"""Backlog drain: N readings buffered during an outage, then drained to mosquitto at QoS 1.

Baselines in the same run: a raw paho QoS 1 loop publishing the same readings one message each
(what a client without batching does: the ratio), and the same loop publishing gatewayd's own
batched messages straight from memory (the wire's lower bound, no storage at all).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from bench_uplink import publish_loop
from harness import LatencySubscriber, Mosquitto, rig, wait_for

from gatewayd.buffer import Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Record


def _fill(db: Path, n: int) -> float:
    store = Store(db, BufferConfig(max_bytes=4 * 1024**3))
    t0 = time.monotonic()
    batch = 1000
    for start in range(0, n, batch):
        store.append(
            [
                Record(f"dev{i % 10}/r{i % 100}", 1_764_000_000_000 + i, float(i))
                for i in range(start, min(n, start + batch))
            ]
        )
    store.close()
    return time.monotonic() - t0


def _payloads(db: Path, batch: int) -> list[bytes]:
    """The stored readings as messages of `batch` records (1: one message per reading)."""
    from gatewayd.uplink.payload import encode_json

    store = Store(db, BufferConfig(max_bytes=4 * 1024**3))
    out = []
    while entries := store.take(batch, 256 * 1024):
        out.append(encode_json(entries))
    store.close()
    return out


def backlog(n: int) -> dict[str, Any]:
    with rig() as r:
        db = r.work / "buffer.sqlite"
        fill_s = _fill(db, n)
        size_full = db.stat().st_size
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        batches = _payloads(db, 500)
        raw_batches_s = publish_loop(broker.port, batches, 20)
        singles = _payloads(db, 1)
        raw_s = publish_loop(broker.port, singles, 20)
        del singles
        sub = LatencySubscriber(broker.port)
        t0 = time.monotonic()
        r.start_gateway(r.config(broker.port, 0, 1000))
        wait_for(lambda: sub.unique >= n, 600, f"{n} records at the subscriber", interval=0.1)
        drain_s = time.monotonic() - t0

        def depth() -> int:
            with sqlite3.connect(db, timeout=5) as c:
                return int(c.execute("SELECT COUNT(*) FROM records").fetchone()[0])

        wait_for(lambda: depth() == 0, 60, "acks to empty the buffer")
        sub.close()
        return {
            "readings": n,
            "fill_s": fill_s,
            "drain_s": drain_s,
            "drain_per_s": n / drain_s,
            "raw_paho_s": raw_s,
            "raw_paho_batches_s": raw_batches_s,
            "raw_paho_batch_messages": len(batches),
            "drain_ratio_vs_raw_paho": raw_s / drain_s,
            "file_mb_full": size_full / 1e6,
            "file_mb_after_drain": db.stat().st_size / 1e6,
            "duplicates": sub.duplicates,
        }
