"""Cloud commands against a real simulated Modbus device: NaN and Infinity in a command are
refused, every result names its reason and whether the write may have happened, and every
result is strict JSON."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import free_port

from gatewayd.config import GatewayConfig, load
from gatewayd.drivers import Driver
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.metrics import Metrics
from gatewayd.remote_config import CommandHandler
from gatewayd_sim.modbus import ModbusTcpSlave


@dataclass
class Host:
    cfg: GatewayConfig
    drivers: dict[str, Driver] = field(default_factory=dict)


def _config(port: int) -> GatewayConfig:
    return load(f"""
[gateway]
state_dir = "/tmp"
[uplink]
[uplink.auth]
kind = "none"
[remote_config]
commands_per_minute = 1000
[[devices]]
id = "plc"
driver = "modbus_tcp"
port = {port}
timeout_s = 0.2
[[devices.points]]
id = "sp"
table = "holding"
address = 0
type = "float32"
writable = true
min = -100
max = 100
[[devices.points]]
id = "u16"
table = "holding"
address = 10
type = "uint16"
writable = true
""")


def _strict(text: str) -> Any:
    def refuse(c: str) -> Any:
        raise AssertionError(f"not strict JSON: {c}")

    return json.loads(text, parse_constant=refuse)


async def _run(port: int, payloads: list[bytes]) -> list[dict[str, Any]]:
    cfg = _config(port)
    host = Host(cfg, {"plc": ModbusDriver(cfg.devices[0])})
    results: list[dict[str, Any]] = []
    handler = CommandHandler(host, results.append, Metrics())
    for payload in payloads:
        handler.on_message("/devices/gw/commands", payload)
        while handler._tasks:
            await asyncio.sleep(0.01)
    await host.drivers["plc"].close()
    # What the uplink would publish: strict JSON, every time.
    return [_strict(json.dumps(r, allow_nan=False)) for r in results]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_in_a_command_are_refused_and_nothing_is_written(number: str) -> None:
    async def body() -> None:
        slave = await ModbusTcpSlave().start()
        slave.unit(1)
        try:
            payload = f'{{"id": "c1", "point": "plc/sp", "value": {number}}}'.encode()
            (r,) = await _run(slave.port, [payload])
            assert r["status"] == "refused", r
            assert r["reason"].startswith("malformed command: "), r
            assert "send a finite number" in r["reason"], r
            assert slave.unit(1).writes == 0
        finally:
            await slave.stop()

    asyncio.run(body())


def test_nan_in_a_command_id_is_refused_and_the_result_is_strict_json() -> None:
    async def body() -> None:
        slave = await ModbusTcpSlave().start()
        try:
            (r,) = await _run(slave.port, [b'{"id": NaN, "command": "ping"}'])
            assert (r["id"], r["status"]) == (None, "refused")
        finally:
            await slave.stop()

    asyncio.run(body())


def test_every_write_result_names_its_reason_and_what_is_known() -> None:
    async def body() -> None:
        slave = await ModbusTcpSlave().start()
        model = slave.unit(1)
        faults = slave.faults(1)
        try:

            def cmd(cid: str, point: str, value: object) -> bytes:
                return json.dumps({"id": cid, "point": point, "value": value}).encode()

            results: dict[str, dict[str, Any]] = {}
            (r,) = await _run(slave.port, [cmd("ok", "plc/sp", 12.5)])
            results["ok"] = r
            (r,) = await _run(slave.port, [cmd("fit", "plc/u16", 70000)])
            results["fit"] = r
            faults.__dict__.update(exception=2, times=1)
            (r,) = await _run(slave.port, [cmd("exc", "plc/u16", 7)])
            results["exc"] = r
            faults.__dict__.update(delay_s=0.6, times=1)  # applied, answered too late
            (r,) = await _run(slave.port, [cmd("late", "plc/u16", 8)])
            results["late"] = r
        finally:
            await slave.stop()
        (r,) = await _run(free_port(), [cmd("dead", "plc/u16", 9)])
        results["dead"] = r

        got = {k: (v["status"], v["reason"]) for k, v in results.items()}
        assert got == {
            "ok": ("ok", "wrote 12.5 to plc/sp"),
            "fit": (
                "refused",
                "plc/u16: value 70000 does not fit uint16; send a value uint16 can hold",
            ),
            "exc": ("failed", "plc/u16: exception 02 illegal data address; nothing was written"),
            "late": (
                "unknown",
                "plc/u16: timeout: outcome unknown; read the point back before retrying",
            ),
            "dead": ("failed", "plc/u16: connection refused; nothing was written"),
        }
        assert model.holding[10] == 8, "the write reported unknown was in fact applied"

    asyncio.run(body())
