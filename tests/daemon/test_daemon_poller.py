"""The Poller in-process, against a simulated Modbus device: devices added and removed live."""

from __future__ import annotations

import asyncio

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd.metrics import Metrics
from gatewayd.polling import Poller
from gatewayd.reading import Quality, Reading
from gatewayd_sim.modbus import ModbusTcpSlave, constant


def _device(dev_id: str, port: int) -> DeviceConfig:
    return device_config(
        ModbusTcpOptions,
        id=dev_id,
        driver="modbus_tcp",
        port=port,
        interval_ms=50,
        points=(PointConfig(id="t", table="holding", address=0),),
    )


def test_devices_added_and_removed_live_start_and_stop_polling() -> None:
    async def scenario() -> None:
        slave = await ModbusTcpSlave().start()
        slave.feed(1, "holding", 0, constant(42))
        got: list[Reading] = []

        async def sink(group: PollGroup, readings: list[Reading]) -> None:
            got.extend(readings)

        metrics = Metrics()
        poller = Poller(metrics, sink)
        poller.start([_device("a", slave.port)])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if metrics.get("polls", device="a") >= 3:
                break
        poller.add([_device("b", slave.port)])
        for _ in range(100):
            await asyncio.sleep(0.05)
            if metrics.get("polls", device="b") >= 3:
                break
        await poller.remove("a")
        await asyncio.sleep(0.1)  # a poll in flight may still finish
        polls_a = metrics.get("polls", device="a")
        polls_b = metrics.get("polls", device="b")
        await asyncio.sleep(0.4)
        assert metrics.get("polls", device="a") == polls_a, "a removed device is not polled"
        assert metrics.get("polls", device="b") > polls_b
        assert "a" not in poller.slots and "a" not in poller.polled_at
        assert set(poller.drivers) == {"b"}
        assert "b" in poller.polled_at
        await poller.stop()
        await slave.stop()
        assert {(r.point, r.value, r.quality) for r in got} == {
            ("a/t", 42, Quality.GOOD),
            ("b/t", 42, Quality.GOOD),
        }

    asyncio.run(scenario())
