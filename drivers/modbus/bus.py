"""Shared buses: the devices (unit ids) on one serial port or one serial gateway share one link.

A link is opened by the first driver that needs it and closed when the last one lets go.
"""

from __future__ import annotations

from collections.abc import Callable

from .rtu import RtuLink

_links: dict[str, tuple[RtuLink, int]] = {}


def acquire(key: str, make: Callable[[], RtuLink]) -> RtuLink:
    link, users = _links.get(key) or (make(), 0)
    _links[key] = (link, users + 1)
    return link


def release(key: str) -> None:
    if key not in _links:
        return
    link, users = _links[key]
    if users <= 1:
        del _links[key]
        link.close()
    else:
        _links[key] = (link, users - 1)
