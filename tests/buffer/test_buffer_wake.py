"""`first` over Wake events: returns on a set, a done stop future or the timeout, whichever
comes first, and leaves nothing parked behind (a real event loop, no mocks)."""

from __future__ import annotations

import asyncio

from gatewayd.buffer.wake import Wake, first


def test_first_returns_on_a_set_a_stop_or_the_timeout_and_leaves_nothing_behind() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        a, b = Wake(), Wake()
        stop: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, b.set)
        await asyncio.wait_for(first([a, b], 30, stop), 10)  # b's set, not the timeout
        assert b.is_set() and not a.is_set()
        assert not a._listeners and not b._listeners
        b.clear()
        loop.call_later(0.01, stop.set_result, "closed")
        await asyncio.wait_for(first([a, b], 30, stop), 10)  # the stop
        assert not a._listeners and not b._listeners
        await asyncio.wait_for(first([a], 0.01, loop.create_future()), 10)  # the timeout
        a.set()
        await asyncio.wait_for(first([a], 30, loop.create_future()), 1)  # already set
        c = Wake()
        waiter = asyncio.ensure_future(c.wait())  # a plain Event waiter still works
        await asyncio.sleep(0)
        c.set()
        await asyncio.wait_for(waiter, 1)

    asyncio.run(go())
