"""An unreachable OPC UA server is down as a Modbus device is: in the real daemon (scheduler,
device health, buffer), against asyncua's own server (hw-sim/opcua) on a real socket.

One outage is one device_down event and its end one device_up event; while down, the points'
qualities are on the state document and no bad reading is stored per point per poll.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua")

from helpers import free_port

from gatewayd.config import load
from gatewayd.daemon import Gateway
from gatewayd.device_health import DOWN_GAUGE
from gatewayd.reading import Lane, Quality, Record
from gatewayd_sim.opcua import SimServer

POINTS = 2
THRESHOLD = 3


def config(tmp_path: Path, ua_port: int) -> str:
    return f"""
[gateway]
state_dir = "{tmp_path}"
# In the pytest worker: its resident set is the whole test process's (hundreds of MB after
# many tests), not a gateway's; at the default ceiling the guard shed this test's polls.
memory_limit_mb = 65536
[metrics]
listen = ""
[uplink]
host = "127.0.0.1"
port = {free_port()}
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
[[devices]]
id = "ua"
driver = "opcua"
endpoint = "opc.tcp://127.0.0.1:{ua_port}/sim"
security_policy = "None"
publishing_interval_ms = 100
interval_ms = 100
backoff_base_s = 0.1
backoff_cap_s = 0.3
request_timeout_s = 1.0
fail_threshold = {THRESHOLD}
[[devices.points]]
id = "temp"
node = "ns=2;s=Plant.Temperature"
sampling_interval_ms = 100
[[devices.points]]
id = "name"
node = "ns=2;s=Plant.Name"
mode = "poll"
"""


async def until(what: Callable[[], Any], limit_s: float, name: str) -> Any:
    deadline = time.monotonic() + limit_s
    while not (got := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {name}"
        await asyncio.sleep(0.05)
    return got


def test_an_unreachable_opcua_server_is_one_device_down_and_one_device_up(
    tmp_path: Path,
) -> None:
    ua_port = free_port()

    async def body() -> list[Record]:
        sim = await SimServer(ua_port, period_s=0.1).start()
        gw = Gateway(load(config(tmp_path, ua_port)), tmp_path, tmp_path)
        await gw.start()
        try:

            def ua() -> dict[str, Any]:
                return gw.device_health.document().get("ua", {})

            await until(lambda: ua().get("good") == POINTS, 30, "both points good")
            await sim.stop()
            doc = await until(lambda: ua().get("status") == "down" and ua(), 30, "ua down")
            assert doc["cause"] == "connection refused", doc
            assert doc["good"] == 0 and sorted(doc["bad"]["disconnected"]) == ["name", "temp"]
            assert gw.metrics.get(DOWN_GAUGE, device="ua", cause="connection refused") > 0
            polls = gw.metrics.get("polls", device="ua")
            await until(lambda: gw.metrics.get("polls", device="ua") >= polls + 20, 30, "polls")
            sim = await SimServer(ua_port, period_s=0.1).start()
            await until(lambda: ua().get("status") == "up", 30, "ua up again")
            assert gw.metrics.get(DOWN_GAUGE, device="ua", cause="connection refused") == 0
            assert gw.buffer is not None
            return [e.record() for e in await gw.buffer.peek(100_000)]
        finally:
            await gw.stop()
            await sim.stop()

    records = asyncio.run(asyncio.wait_for(body(), 120))
    events = [(r.point, r.reason, r.quality) for r in records if r.lane is Lane.EVENT]
    assert events == [
        ("ua", "device_down", Quality.BAD),
        ("ua", "device_up", Quality.GOOD),
    ], events
    down = next(r for r in records if r.reason == "device_down")
    assert down.value == "connection refused"
    # Bad readings only for the polls before the server was down, not for the 20+ while down.
    bad = [r for r in records if r.point.startswith("ua/") and r.quality is not Quality.GOOD]
    assert 0 < len(bad) <= THRESHOLD * POINTS, bad
    assert {r.reason for r in bad} <= {"disconnected: connection refused"}, bad
