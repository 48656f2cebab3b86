"""The OPC UA driver's memory stays bounded across re-created sessions (asyncua's own server in
the same loop, real sessions and subscriptions): a reconnect leaves no client, subscription or
asyncua client task behind. (The server side is another matter: asyncua's server keeps a
timeout task per closed session, which is why only client objects are counted.)"""

from __future__ import annotations

import asyncio
import collections
import gc
import time

import pytest

pytest.importorskip("asyncua")

from test_opcua_driver import TEMP, collect, device, run

from gatewayd.drivers import poll_groups
from gatewayd.drivers.opcua import OpcUaDriver
from gatewayd.reading import Quality
from gatewayd_sim.opcua import SimServer
from gatewayd_sim.procs import free_port


def census() -> dict[str, int]:
    """Live asyncua client objects, by class, and the loop's tasks running asyncua client code."""
    gc.collect()
    names = collections.Counter(
        type(o).__qualname__
        for o in gc.get_objects()
        if type(o).__module__.startswith(("asyncua.client", "asyncua.common.subscription"))
    )
    tasks = sum(
        1
        for t in asyncio.all_tasks()
        if "asyncua/client/" in getattr(t.get_coro(), "cr_code", t.get_coro()).co_filename
    )
    return {"Client": names["Client"], "Subscription": names["Subscription"], "tasks": tasks}


def test_re_created_sessions_leave_one_client_one_subscription_and_no_stray_tasks() -> None:
    async def body() -> None:
        port = free_port()
        sim = await SimServer(port, period_s=0.05).start()
        dev = device(port, TEMP)
        drv = OpcUaDriver(dev)
        (group,) = poll_groups(dev)
        try:
            await collect(drv, group, lambda g: len(g) >= 3)
            first = census()
            assert (first["Client"], first["Subscription"]) == (1, 1), first
            for _ in range(6):
                assert await sim.expire_sessions() == 1
                since = time.time() * 1000 + 300
                await collect(
                    drv,
                    group,
                    lambda g, since=since: (
                        sum(r.quality is Quality.GOOD and r.ts_ms > since for r in g) >= 2
                    ),
                    30,
                )
            assert census() == first
        finally:
            await drv.close()
            await sim.stop()
        left = census()
        assert left["Client"] == 0 and left["tasks"] == 0, left

    run(body)
