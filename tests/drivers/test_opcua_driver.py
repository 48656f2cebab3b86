"""The OPC UA driver against asyncua's own server (hw-sim/opcua), in one event loop: real
sockets, real sessions, real subscriptions and Basic256Sha256 with real certificates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua")

from gatewayd.config import ConfigError, DeviceConfig, load
from gatewayd.drivers import PollGroup, WriteError, poll_groups
from gatewayd.drivers.opcua import OpcUaDriver
from gatewayd.reading import Quality, Reading
from gatewayd_sim.opcua import SimServer, make_certificate
from gatewayd_sim.procs import free_port

HEAD = '[uplink.auth]\nkind = "none"\n'


def device(port: int, points: str, **opts: Any) -> DeviceConfig:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in opts.items())
    if "security_policy" not in opts:
        extra += 'security_policy = "None"\n'
    text = (
        f'{HEAD}[[devices]]\nid = "u"\ndriver = "opcua"\n'
        f'endpoint = "opc.tcp://127.0.0.1:{port}/sim"\npublishing_interval_ms = 50\n'
        f"interval_ms = 200\nbackoff_base_s = 0.1\nbackoff_cap_s = 0.3\n{extra}{points}"
    )
    (dev,) = load(text).devices
    return dev


TEMP = (
    '[[devices.points]]\nid = "t"\nnode = "ns=2;s=Plant.Temperature"\nsampling_interval_ms = 50\n'
)
COUNTER = '[[devices.points]]\nid = "c"\nbrowse_path = "0:Objects/2:Plant/2:Counter"\n'
NAME = '[[devices.points]]\nid = "n"\nnode = "ns=2;s=Plant.Name"\nmode = "poll"\n'
SETPOINT = (
    '[[devices.points]]\nid = "sp"\nnode = "ns=2;s=Plant.Setpoint"\nmode = "poll"\n'
    "writable = true\nmin = 0.0\nmax = 100.0\n"
)


async def collect(
    drv: OpcUaDriver, group: PollGroup, enough: Callable[[list[Reading]], bool], limit_s: float = 20
) -> list[Reading]:
    got: list[Reading] = []
    deadline = time.monotonic() + limit_s
    while not enough(got):
        assert time.monotonic() < deadline, f"not enough readings: {got[-5:]}"
        got += await drv.poll(group)
        await asyncio.sleep(0.1)
    return got


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


@contextlib.asynccontextmanager
async def running(
    sim: SimServer, dev: DeviceConfig
) -> AsyncIterator[tuple[OpcUaDriver, PollGroup]]:
    """The server started and a driver for `dev` with its one poll group; both closed after."""
    await sim.start()
    drv = OpcUaDriver(dev)
    (group,) = poll_groups(dev)
    try:
        yield drv, group
    finally:
        await drv.close()
        await sim.stop()


def test_subscribed_and_polled_values_carry_the_servers_timestamps_and_status() -> None:
    async def body() -> None:
        port = free_port()
        sim = SimServer(port, period_s=0.05, ts_offset_s=-3600, bad={"Counter": "BadSensorFailure"})
        async with running(sim, device(port, TEMP + COUNTER + NAME)) as (drv, group):
            got = await collect(drv, group, lambda g: sum(r.point == "u/t" for r in g) >= 5)
        temps = [r for r in got if r.point == "u/t"]
        assert all(r.quality is Quality.GOOD and 54.9 < r.value < 65.1 for r in temps), temps
        # The server stamps an hour back: the readings carry its SourceTimestamp, not ours.
        hour_ago = time.time() * 1000 - 3600_000
        assert all(abs(r.ts_ms - hour_ago) < 60_000 for r in temps), temps[:2]
        assert len({r.ts_ms for r in temps}) == len(temps), "one reading per server change"
        counter = [r for r in got if r.point == "u/c"]
        assert counter and all(
            (r.quality, r.reason, r.value) == (Quality.BAD, "BadSensorFailure", None)
            for r in counter
        )
        names = [r for r in got if r.point == "u/n"]
        assert names and all(r.value == "boiler-1" for r in names)

    run(body)


def test_writes_go_through_check_write_and_reach_the_server() -> None:
    async def body() -> None:
        port = free_port()
        dev = device(port, SETPOINT)
        sp = dev.points[0]
        async with running(SimServer(port), dev) as (drv, group):
            with pytest.raises(WriteError, match=r"above max = 100\.0") as err:
                await drv.write(sp, 150.0)
            assert err.value.outcome == "refused"
            await drv.write(sp, 42.5)
            (r,) = await drv.poll(group)
            assert (r.value, r.quality) == (42.5, Quality.GOOD)

    run(body)


def test_a_flood_of_notifications_is_bounded_and_the_drops_counted() -> None:
    async def body() -> None:
        port = free_port()
        sim = SimServer(port, period_s=0.02, items=50)
        bulk = "".join(
            f'[[devices.points]]\nid = "b{i}"\nnode = "ns=2;s=Bulk.{i}"\n'
            "sampling_interval_ms = 10\n"
            for i in range(50)
        )
        async with running(sim, device(port, bulk, queue_max=100)) as (drv, group):
            assert await drv.poll(group) == []  # connects; nothing queued yet
            await asyncio.sleep(1.5)  # ~75 ticks x 50 items arrive, nobody polls
            assert drv._queued <= 100
            got = await drv.poll(group)
        assert 0 < len(got) <= 100
        assert drv.counters["notifications_dropped"] > 500
        # The newest survive: the last reading of each item is recent.
        assert max(r.value for r in got if isinstance(r.value, float)) >= 1000 * (sim.ticks - 5)

    run(body)


def test_the_server_restarting_resumes_readings_with_a_new_subscription() -> None:
    async def body() -> None:
        port = free_port()
        sim = await SimServer(port, period_s=0.05).start()
        dev = device(port, TEMP)
        drv = OpcUaDriver(dev)
        (group,) = poll_groups(dev)
        try:
            await collect(drv, group, lambda g: len(g) >= 3)
            await sim.stop()
            down = await collect(drv, group, lambda g: any(r.quality is Quality.BAD for r in g))
            assert down[-1].reason and down[-1].reason.startswith(
                ("disconnected", "subscription_lost")
            )
            sim = await SimServer(port, period_s=0.05).start()
            up = await collect(drv, group, lambda g: sum(r.quality is Quality.GOOD for r in g) >= 3)
            assert up[-1].quality is Quality.GOOD
        finally:
            await drv.close()
            await sim.stop()

    run(body)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    server_cert, server_key = make_certificate(d, "server", "urn:gatewayd:sim:server", True)
    client_cert, client_key = make_certificate(d, "client", "urn:gatewayd:client", False)
    other_cert, other_key = make_certificate(d, "intruder", "urn:gatewayd:client", False)
    return {
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "other_cert": other_cert,
        "other_key": other_key,
    }


def secure_sim(port: int, pki: dict[str, Path], security: str = "encrypt") -> SimServer:
    """A Basic256Sha256 server with the server certificate, trusting only the client's."""
    return SimServer(
        port,
        security=security,
        cert=pki["server_cert"],
        key=pki["server_key"],
        trust=[pki["client_cert"]],
    )


def secure_device(
    port: int,
    pki: dict[str, Path],
    client: str = "client",
    trusted: str = "server_cert",
    **opts: Any,
) -> DeviceConfig:
    """A Basic256Sha256 device presenting `client`'s certificate and trusting `trusted`."""
    return device(
        port,
        TEMP,
        security_policy="Basic256Sha256",
        certificate=str(pki[f"{client}_cert"]),
        private_key=str(pki[f"{client}_key"]),
        trust=[str(pki[trusted])],
        **opts,
    )


async def first_poll(sim: SimServer, dev: DeviceConfig) -> Reading:
    async with running(sim, dev) as (drv, group):
        (r,) = await drv.poll(group)
    return r


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
def test_basic256sha256_with_a_trusted_client_certificate_connects(
    pki: dict[str, Path], mode: str
) -> None:
    async def body() -> None:
        port = free_port()
        sim = secure_sim(port, pki, "encrypt" if mode == "SignAndEncrypt" else "sign")
        async with running(sim, secure_device(port, pki, security_mode=mode)) as (drv, group):
            got = await collect(drv, group, lambda g: any(r.quality is Quality.GOOD for r in g))
        assert got[-1].point == "u/t"

    run(body)


def test_an_untrusted_client_certificate_is_refused_with_a_clear_reason(
    pki: dict[str, Path],
) -> None:
    async def body() -> None:
        port = free_port()
        r = await first_poll(secure_sim(port, pki), secure_device(port, pki, client="other"))
        assert r.quality is Quality.BAD
        assert r.reason and r.reason.startswith("security_refused: Bad"), r.reason
        assert "trust list" in r.reason

    run(body)


def test_a_server_certificate_outside_the_trust_list_is_refused(pki: dict[str, Path]) -> None:
    async def body() -> None:
        port = free_port()
        # The client trusts only another certificate, not the server's.
        r = await first_poll(secure_sim(port, pki), secure_device(port, pki, trusted="other_cert"))
        assert r.reason and r.reason.startswith(
            "security_refused: the server's certificate is not in the trust list"
        ), r.reason

    run(body)


def test_config_names_place_and_fix_for_opcua_options() -> None:
    base = f'{HEAD}[[devices]]\nid = "u"\ndriver = "opcua"\nendpoint = "opc.tcp://h:4840"\n'
    with pytest.raises(ConfigError) as err:
        load(base + TEMP)
    assert str(err.value) == (
        'devices[0].certificate: missing, demanded by security_policy = "Basic256Sha256"; give the '
        'client certificate files, or security_policy = "None" on a trusted network only'
    )
    unsecured = base + 'security_policy = "None"\n'
    with pytest.raises(ConfigError) as err:
        load(unsecured + '[[devices.points]]\nid = "x"\nnode = "ns=2;q=oops"\n')
    assert str(err.value).startswith("devices[0].points[0].node: 'ns=2;q=oops' is not a NodeId;")
    with pytest.raises(ConfigError) as err:
        load(unsecured + '[[devices.points]]\nid = "x"\n')
    assert str(err.value).startswith("devices[0].points[0].node: give exactly one of node and")
    assert load(unsecured + '[[devices.points]]\nid = "x"\nnode = "i=2258"\n').devices


def test_an_expired_session_is_noticed_and_re_created_with_its_subscription(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        port = free_port()
        sim = SimServer(port, period_s=0.05)
        # Subscribed only: no read fails, the publish loop tells.
        async with running(sim, device(port, TEMP)) as (drv, group):
            await collect(drv, group, lambda g: len(g) >= 3)
            assert await sim.expire_sessions() == 1
            expired_ms = time.time() * 1000
            await collect(
                drv,
                group,
                lambda g: (
                    sum(r.quality is Quality.GOOD and r.ts_ms > expired_ms + 500 for r in g) >= 3
                ),
            )
            assert len(sim._server.iserver._external_sessions) == 1, "one new session"

    run(body)
    lost = [r.getMessage() for r in caplog.records if "opcua_unavailable" in r.getMessage()]
    assert len(lost) == 1 and "reason=subscription_lost: Bad" in lost[0], lost
