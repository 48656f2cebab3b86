"""Publishing rules against the cloud stand-in: batch size, pacing, window, subfolders, encoder."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest
from uplink_harness import EVENTS, Harness, until, uplink_cfg

from gatewayd.reading import Record
from gatewayd_sim.cloud import Broker


def test_batches_stay_under_the_size_limit_and_the_message_rate(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = await Broker().start()
        seen: list[tuple[float, int]] = []
        broker.on_message = lambda t, p: seen.append((time.monotonic(), len(p)))
        cfg = dataclasses.replace(
            uplink_cfg(broker.port), batch_max_bytes=4096, max_messages_per_s=20.0
        )
        h = await Harness.open(tmp_path, cfg)
        try:
            ids = await h.append(1500)
            await h.drained(30)
            assert sorted(broker.recorder.counts) == ids
            assert max(size for _, size in seen) <= 4096
            assert len(seen) >= 1500 * 60 // 4096  # ~60 bytes a record: many messages
            # Paced at 20/s: any 21 consecutive messages span at least a second.
            times = [t for t, _ in seen]
            spans = [b - a for a, b in zip(times, times[20:], strict=False)]
            assert min(spans) >= 0.95, min(spans)
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_unacknowledged_messages_stop_at_the_window_then_time_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = await Broker().start()
        broker.acks_enabled = False  # a broker that silently stops acknowledging
        cfg = dataclasses.replace(
            uplink_cfg(broker.port), batch_max_records=10, inflight_window=5, puback_timeout_s=1.0
        )
        h = await Harness.open(tmp_path, cfg)
        try:
            await h.append(200)
            await until(lambda: h.metrics.total("uplink_puback_timeouts") >= 1, 10, "timeout")
            first_session = broker.recorder.messages
            assert first_session <= 5 * 2, "at most the window per session (two sessions max)"
            assert await h.depth() == 200, "nothing acked without a PUBACK"
            broker.acks_enabled = True
            await h.drained(15)
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_subfolder_records_go_to_their_topic_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = await Broker().start()
        topics: list[tuple[str, list[int]]] = []
        broker.on_message = lambda t, p: topics.append((t, [r["id"] for r in json.loads(p)]))
        h = await Harness.open(tmp_path, uplink_cfg(broker.port))
        try:
            await h.halt()
            now = int(time.time() * 1000)
            recs = [
                Record("plc/a", now, 1.0),
                Record("plc/b", now, 2.0, subfolder="energy"),
                Record("plc/c", now, 3.0, subfolder="energy"),
                Record("plc/d", now, 4.0),
            ]
            ids = await h.buffer.append(recs)
            await h.drained(10)
            got = [(t, i) for t, i in topics if t.startswith(EVENTS)]
            assert got == [
                (EVENTS, [ids[0]]),
                (EVENTS + "/energy", ids[1:3]),
                (EVENTS, [ids[3]]),
            ]
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_payload_has_stable_id_point_ts_value_quality(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = await Broker().start()
        h = await Harness.open(tmp_path, uplink_cfg(broker.port))
        try:
            ids = await h.append(3)
            await h.drained(10)
            rec = broker.recorder.records[0]
            assert list(rec) == ["id", "point", "ts", "value", "quality"]
            assert rec["id"] == ids[0] and rec["point"] == "plc/x" and rec["quality"] == "good"
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_stop_waits_for_pubacks_in_flight(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = await Broker().start()
        broker.ack_delay_s = 0.5
        h = await Harness.open(tmp_path, uplink_cfg(broker.port))
        try:
            await h.append(100)
            await until(lambda: broker.recorder.messages, 10, "the batch at the broker")
            assert h.metrics.total("acked_records") == 0
            await h.uplink.stop(drain_s=3.0)
            assert h.metrics.total("acked_records") == 100
            assert await h.depth() == 0
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_unknown_encoder_is_refused_naming_the_setting() -> None:
    from gatewayd.config import ConfigError
    from gatewayd.uplink.payload import encode_json, load_encoder

    assert load_encoder("json") is encode_json
    with pytest.raises(ConfigError, match=r"^uplink.encoder: unknown encoder 'protobuf'"):
        load_encoder("protobuf")
