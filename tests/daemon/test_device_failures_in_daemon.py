"""In the real daemon (scheduler, rules, buffer), a failing device yields bad readings with its
reason while the other devices keep being polled at their rate."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from helpers import free_port

from gatewayd.config import load
from gatewayd.daemon import Gateway
from gatewayd.reading import Quality
from gatewayd_sim.modbus import ModbusRtuSlave, ModbusTcpSlave


def test_daemon_keeps_polling_good_devices_while_others_fail(tmp_path: Path) -> None:
    free_tcp_port = free_port()  # nobody listens: the uplink retries on its own
    rtu = ModbusRtuSlave(baud=115200).start()
    rtu.unit(2).holding[0] = 22

    async def body() -> list[tuple[str, Quality, str | None]]:
        good, bad = await ModbusTcpSlave().start(), await ModbusTcpSlave().start()
        good.unit(1).holding[0] = 11
        bad.unit(1)
        bad.faults(1).drop = True
        cfg = load(f"""
[gateway]
state_dir = "{tmp_path}"
# In the pytest worker: its resident set is the whole test process's (hundreds of MB after
# many tests), not a gateway's; at the default ceiling the guard shed this test's polls.
memory_limit_mb = 65536
[uplink]
host = "127.0.0.1"
port = {free_tcp_port}
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
[[devices]]
id = "good"
driver = "modbus_tcp"
port = {good.port}
interval_ms = 100
points = [{{ id = "v", table = "holding", address = 0 }}]
[[devices]]
id = "silent"
driver = "modbus_tcp"
port = {bad.port}
interval_ms = 100
timeout_s = 0.2
points = [{{ id = "v", table = "holding", address = 0 }}]
[[devices]]
id = "rtu"
driver = "modbus_rtu"
serial_port = "{rtu.path}"
baud = 115200
unit = 2
interval_ms = 100
points = [{{ id = "v", table = "holding", address = 0 }}]
[[devices]]
id = "unplugged"
driver = "modbus_rtu"
serial_port = "{tmp_path}/no-such-tty"
interval_ms = 100
points = [{{ id = "v", table = "holding", address = 0 }}]
""")
        gw = Gateway(cfg, tmp_path, tmp_path)
        await gw.start()
        try:
            for _ in range(200):
                if (
                    gw.metrics.get("polls", device="good") >= 10
                    and gw.metrics.get("polls", device="rtu") >= 10
                    and gw.metrics.get("poll_failures", device="silent") >= 1
                ):
                    break
                await asyncio.sleep(0.05)
            assert gw.buffer is not None
            entries = await gw.buffer.peek(100_000)
            return [(r.point, r.quality, r.reason) for r in (e.record() for e in entries)]
        finally:
            await gw.stop()
            await good.stop()
            await bad.stop()

    try:
        seen = Counter(asyncio.run(body()))
    finally:
        rtu.stop()
    assert seen[("good/v", Quality.GOOD, None)] >= 10
    assert seen[("rtu/v", Quality.GOOD, None)] >= 10
    assert seen[("silent/v", Quality.BAD, "timeout")] >= 1
    assert seen[("unplugged/v", Quality.BAD, "disconnected")] >= 1
    assert {p for p, q, _ in seen if q is Quality.GOOD} == {"good/v", "rtu/v"}
