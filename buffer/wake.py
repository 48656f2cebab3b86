"""A wake-up that can be waited on together with others, without a task per wait.

Invariants:
- a `Wake` is an asyncio.Event: whatever waits on or sets an Event works with one unchanged;
- `first(wakes, timeout, stop)` returns once one of `wakes` is set, `stop` is done or `timeout`
  passed (at once when one already is), and leaves no listener, callback or timer behind.

Why: the uplink waits several times per poll for "records appended, a PUBACK came, or the
connection closed". `asyncio.wait` on `Event.wait()` coroutines costs a task per event (created,
stepped, cancelled and stepped again) and a future and callbacks per wait; here a wait is one
future and one timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


class Wake(asyncio.Event):
    """An Event that also resolves the futures `first` parked on it when it is set."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[asyncio.Future[None]] = []

    def set(self) -> None:
        super().set()
        if self._listeners:
            listeners, self._listeners = self._listeners, []
            for fut in listeners:
                if not fut.done():
                    fut.set_result(None)


async def first(wakes: Sequence[Wake], timeout: float, stop: asyncio.Future[Any]) -> None:
    """Until one of `wakes` is set, `stop` is done, or `timeout` seconds passed."""
    if stop.done() or any(w.is_set() for w in wakes):
        return
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not fut.done():
            fut.set_result(None)

    for w in wakes:
        w._listeners.append(fut)
    stop.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await fut
    finally:
        timer.cancel()
        stop.remove_done_callback(wake)
        for w in wakes:
            if fut in w._listeners:
                w._listeners.remove(fut)
