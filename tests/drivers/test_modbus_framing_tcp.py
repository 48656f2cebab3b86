"""Modbus TCP framing against a hostile slave: replies matched by transaction id, stale and
duplicate frames dropped however many, cut-off frames never completed by a later one, and the
unit ids a device is configured to answer with."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from modbus_env import device, group, point, wrong_good

from gatewayd.config import ConfigError, load
from gatewayd.drivers.modbus import ModbusDriver
from gatewayd.reading import Quality, Reading
from gatewayd_sim.modbus.hostile import HostileSlave

PTS = [point("a", 0), point("b", 40), point("c", 80, type="uint32")]  # three requests a poll


@pytest.fixture
def make() -> Iterator[list[HostileSlave]]:
    started: list[HostileSlave] = []
    yield started
    for s in started:
        s.stop()


def start(started: list[HostileSlave], **kw: object) -> HostileSlave:
    s = HostileSlave(mix={"valid": 1}, **kw).start_tcp()  # type: ignore[arg-type]
    started.append(s)
    return s


async def polls(drv: ModbusDriver, n: int) -> list[list[Reading]]:
    return [await drv.poll(group(drv.device)) for _ in range(n)]


def test_a_slave_that_hangs_past_many_timeouts_is_read_again_when_it_resumes(
    make: list[HostileSlave],
) -> None:
    # The first answer comes 3 s late: the ~30 requests sent meanwhile all time out, and their
    # replies arrive in a burst when the slave resumes. None may shift the later answers.
    slave = start(make, script=["late"], late_s=3.0)

    async def body() -> None:
        drv = ModbusDriver(device(slave.port, [point("a", 0)], timeout_s=0.1, fail_threshold=99))
        first = await polls(drv, 25)
        assert sum(r.reason == "timeout" for rs in first for r in rs) > 16  # the old id window
        await asyncio.sleep(3.5)  # the slave has resumed and answered the backlog
        later = [r for rs in await polls(drv, 20) for r in rs]
        assert [r.quality for r in later[-10:]] == [Quality.GOOD] * 10, later
        assert wrong_good(later, {"a": drv.device.points[0]}, slave) == []
        await drv.close()

    asyncio.run(body())


def test_a_duplicated_reply_does_not_leave_the_link_one_behind(make: list[HostileSlave]) -> None:
    slave = start(make, script=["valid", "duplicate"], copy_gap_s=(0.02, 0.02))

    async def body() -> None:
        drv = ModbusDriver(device(slave.port, PTS, max_gap=0))
        out = [r for rs in await polls(drv, 10) for r in rs]
        assert all(r.quality is Quality.GOOD for r in out), [r for r in out if r.reason]
        assert wrong_good(out, {p.id: p for p in PTS}, slave) == []
        await drv.close()

    asyncio.run(body())


def test_a_cut_off_reply_is_never_completed_by_a_later_frame(make: list[HostileSlave]) -> None:
    # Each cut reply is followed by a whole earlier reply: its header must not become data.
    slave = start(make, script=["valid", "valid", "valid"] + ["cut", "valid"] * 10)

    async def body() -> None:
        drv = ModbusDriver(device(slave.port, PTS, max_gap=0, fail_threshold=99))
        out = [r for rs in await polls(drv, 12) for r in rs]
        assert wrong_good(out, {p.id: p for p in PTS}, slave) == []
        reasons = {r.reason for r in out if r.quality is not Quality.GOOD}
        assert reasons == {"short_reply"}, reasons
        assert sum(r.quality is Quality.GOOD for r in out) >= 10
        await drv.close()

    asyncio.run(body())


@pytest.mark.parametrize("accept", [(0, 2, 255), "any"])
def test_a_device_answering_with_another_unit_id_can_be_read_when_configured(
    make: list[HostileSlave], accept: tuple[int, ...] | str
) -> None:
    slave = start(make, unit=1)

    async def body() -> None:
        # the slave answers unit 1 with unit 2 ("wrong_unit"): off by default, allowed when asked
        slave.script = ["wrong_unit"] * 2
        strict = ModbusDriver(device(slave.port, [point("a", 0)], id="strict"))
        (r,) = await strict.poll(group(strict.device))
        assert r.reason == "wrong_unit"
        await strict.close()
        lax = ModbusDriver(device(slave.port, [point("a", 0)], id="lax", accept_unit_ids=accept))
        (r,) = await lax.poll(group(lax.device))
        assert r.quality is Quality.GOOD
        assert wrong_good([r], {"a": lax.device.points[0]}, slave) == []
        await lax.close()

    asyncio.run(body())


_TOML = """
[uplink.auth]
kind = "none"
[[devices]]
id = "gw"
driver = "modbus_tcp"
accept_unit_ids = {value}
[[devices.points]]
id = "a"
table = "holding"
address = 0
"""


@pytest.mark.parametrize(
    ("value", "parsed"), [('"any"', "any"), ("[0, 255]", (0, 255)), ("[]", ())]
)
def test_accept_unit_ids_is_read_from_the_config(value: str, parsed: object) -> None:
    (dev,) = load(_TOML.format(value=value)).devices
    assert dev.options.accept_unit_ids == parsed


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('"all"', "devices[0].accept_unit_ids: 'all' is not allowed"),
        ("[0, 256]", "devices[0].accept_unit_ids[1]: 256 is above 255"),
        ("255", 'devices[0].accept_unit_ids: expected "any" or an array of integers'),
    ],
)
def test_a_bad_accept_unit_ids_names_the_fix(value: str, error: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(_TOML.format(value=value))
    assert str(err.value).startswith(error)
    assert "write" in str(err.value) or "use at most 255" in str(err.value)
