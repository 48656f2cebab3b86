"""Shared links: the devices (unit ids) behind one serial port, one serial gateway or one Modbus
TCP gateway share one link, so their requests are serialised and fairly interleaved, and a
gateway that allows few connections sees only one.

A link is opened by the first driver that needs it and closed when the last one lets go. TCP
links belong to an event loop, so the loop is part of their key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


L = TypeVar("L", bound=Closable)

_links: dict[str, tuple[Closable, int]] = {}


def acquire(key: str, make: Callable[[], L]) -> L:
    link, users = _links.get(key) or (make(), 0)
    _links[key] = (link, users + 1)
    return link  # type: ignore[return-value]


def release(key: str) -> None:
    if key not in _links:
        return
    link, users = _links[key]
    if users <= 1:
        del _links[key]
        link.close()
    else:
        _links[key] = (link, users - 1)
