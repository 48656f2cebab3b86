"""Property: against a hostile slave serving a random mix of valid replies and every fault, over
Modbus TCP, RTU on a pty (paced like a line, or as fast as a USB adapter) and RTU over TCP, no
reading is published as good whose value the slave did not hold for that point when it answered,
and every fault is a bad reading with a reason."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from modbus_env import bad_without_reason, group, point, wrong_good

from gatewayd.config import DeviceConfig
from gatewayd.drivers.modbus import ModbusDriver, ModbusRtuDriver, ModbusRtuOverTcpDriver
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality, Reading
from gatewayd_sim.modbus.hostile import MIX, HostileSlave

# Every register type, several byte orders, one-register reads of the same shape at different
# addresses (a misattributed reply must show), and merged reads.
PTS = [
    point("u16", 0),
    point("i16", 1, type="int16"),
    point("u32", 2, type="uint32", order="CDAB"),
    point("i32", 10, type="int32", order="BADC"),
    point("f32", 20, type="float32"),
    point("u64", 30, type="uint64", order="DCBA"),
    point("one", 60),
    point("two", 90),
    point("in", 5, table="input", type="int32"),
]
BY_ID = {p.id: p for p in PTS}
TIMEOUT = 0.15

mixes = st.fixed_dictionaries(
    {k: st.sampled_from([0, w, 3 * w]) for k, w in MIX.items()},
).map(lambda m: m | {"valid": MIX["valid"]})


def polls(drv: Any, n: int) -> list[Reading]:
    async def body() -> list[Reading]:
        out = [r for _ in range(n) for r in await drv.poll(group(drv.device))]
        await drv.close()
        return out

    return list(asyncio.run(body()))


def check(out: list[Reading], slave: HostileSlave) -> None:
    assert wrong_good(out, BY_ID, slave) == [], slave.counts
    assert bad_without_reason(out) == []
    assert any(r.quality is Quality.GOOD for r in out), slave.counts


def device(driver: str, **kw: Any) -> DeviceConfig:
    return device_config(
        id="h",
        driver=driver,
        points=tuple(PTS),
        timeout_s=TIMEOUT,
        max_gap=8,
        fail_threshold=999,
        busy_delay_s=0.01,
        **kw,
    )


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), mix=mixes)
def test_tcp_never_publishes_a_wrong_value_as_good(seed: int, mix: dict[str, float]) -> None:
    slave = HostileSlave(seed=seed, mix=mix, timeout_s=TIMEOUT).start_tcp()
    try:
        out = polls(ModbusDriver(device("modbus_tcp", port=slave.port)), 30)
    finally:
        slave.stop()
    check(out, slave)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), mix=mixes, pacing=st.sampled_from(["fast", "line"]))
def test_rtu_on_a_pty_never_publishes_a_wrong_value_as_good(
    seed: int, mix: dict[str, float], pacing: str
) -> None:
    slave = HostileSlave(seed=seed, mix=mix, timeout_s=TIMEOUT, pacing=pacing, baud=115200)
    slave.start_rtu_pty()
    try:
        dev = device("modbus_rtu", serial_port=slave.path, baud=115200)
        out = polls(ModbusRtuDriver(dev), 30)
    finally:
        slave.stop()
    check(out, slave)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**16), mix=mixes)
def test_rtu_over_tcp_never_publishes_a_wrong_value_as_good(
    seed: int, mix: dict[str, float]
) -> None:
    slave = HostileSlave(seed=seed, mix=mix, timeout_s=TIMEOUT).start_rtu_tcp()
    try:
        out = polls(ModbusRtuOverTcpDriver(device("modbus_rtu_over_tcp", port=slave.port)), 30)
    finally:
        slave.stop()
    check(out, slave)
