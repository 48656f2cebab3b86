"""The uplink against a real NATS server (Debian's nats-server): MQTT 3.1.1 over JetStream.

Records are counted by id at a subscriber with a persistent session, which NATS keeps in
JetStream, so the count holds across a broker SIGKILL and restart on the same store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Nats, Subscriber
from helpers import free_port, gateway_toml, start_gateway, start_modbus_sim, wait_for, write_config
from uplink_harness import EVENTS, Harness, until, uplink_cfg

FIXTURES = Path(__file__).parent.parent / "fixtures"
CONFIG_TOPIC = "/devices/gw-test/config"
STATE_TOPIC = "/devices/gw-test/state"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[Nats]:
    n = Nats(tmp_path / "nats")
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def subscriber(nats: Nats) -> Iterator[Subscriber]:
    s = Subscriber(nats.port, [EVENTS, STATE_TOPIC])
    try:
        wait_for(lambda: s.subscribed, 20, "the subscriber's SUBACK")
        yield s
    finally:
        s.close()


def test_publishes_end_to_end_counted_by_id(
    nats: Nats, subscriber: Subscriber, tmp_path: Path
) -> None:
    async def scenario() -> list[int]:
        h = await Harness.open(tmp_path, uplink_cfg(nats.port))
        try:
            ids = await h.append(5000)
            await h.drained(60)
            await until(lambda: not subscriber.missing(ids), 20, "every record")
            return ids
        finally:
            await h.close()

    ids = asyncio.run(scenario())
    assert not subscriber.missing(ids)
    assert sum(subscriber.counts.values()) == len(ids)  # no duplicates either


def test_sigkill_and_restart_under_load_loses_nothing(
    nats: Nats, subscriber: Subscriber, tmp_path: Path
) -> None:
    reconnects: list[float] = []

    async def scenario() -> list[int]:
        h = await Harness.open(tmp_path, uplink_cfg(nats.port, backoff_cap_s=0.5))
        try:
            h.produce(per_tick=10, tick_s=0.02)  # 500 records/s
            for _ in range(2):
                await until(lambda: h.metrics.total("acked_records") > 500, 20, "delivery")
                await asyncio.sleep(1.0)
                nats.kill()
                await until(lambda: not h.uplink.connected, 20, "the uplink to see it")
                await asyncio.sleep(1.0)  # down for a while, under load
                listening = await asyncio.to_thread(nats.restart)
                before = h.metrics.total("acked_records")
                await until(
                    lambda before=before: h.metrics.total("acked_records") > before,  # type: ignore[misc]
                    30,
                    "delivery after the restart",
                )
                reconnects.append(time.monotonic() - listening)
            await h.halt()
            await h.drained(60)
            await until(lambda: not subscriber.missing(h.sent), 30, "every record")
            return h.sent
        finally:
            await h.close()

    ids = asyncio.run(scenario())
    print(f"nats restart: first PUBACK {', '.join(f'{s:.2f}' for s in reconnects)} s after listen")
    assert len(ids) > 2000
    assert not subscriber.missing(ids)


def _outcome(sub: Subscriber, version: int) -> dict[str, Any] | None:
    with sub.lock:
        states = [json.loads(p) for t, p, _ in sub.messages if t == STATE_TOPIC]
    for s in reversed(states):
        for c in [s.get("config", {}), *s.get("config_recent", [])]:
            if c.get("version") == version:
                return dict(c)
    return None


def test_a_retained_config_is_applied_live_and_its_outcome_reported(
    nats: Nats,
    subscriber: Subscriber,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    port = free_port()
    start_modbus_sim(FIXTURES / "plc_map.toml", port, procs)
    text = gateway_toml(
        tmp_path,
        nats.port,
        port,
        (FIXTURES / "plc_points.toml").read_text(),
        tail="[remote_config]\nhealth_deadline_s = 3.0\n",
    )
    cfg = write_config(tmp_path / "gw.toml", text)
    gw = start_gateway(cfg, procs, tmp_path / "gw.log")
    wait_for(lambda: len(subscriber.counts) > 20, 30, "records from the gateway")
    doc = tomllib.loads(text)
    doc["version"] = 2
    doc["devices"][0]["interval_ms"] = 150
    subscriber.publish(CONFIG_TOPIC, json.dumps(doc).encode(), retain=True)
    outcome = wait_for(lambda: _outcome(subscriber, 2), 30, "the outcome of version 2")
    assert outcome["status"] == "applied", outcome
    assert gw.poll() is None, "applied without a restart"
    # NATS kept it: a new session gets it as a retained message, as the gateway will at start.
    late = Subscriber(nats.port, [CONFIG_TOPIC], client_id="late")
    try:
        wait_for(lambda: late.messages, 20, "the retained config")
        topic, payload, retained = late.messages[0]
        assert topic == CONFIG_TOPIC
        assert retained and json.loads(payload)["version"] == 2
    finally:
        late.close()
