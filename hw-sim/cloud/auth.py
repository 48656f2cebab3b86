"""CONNECT authentication shared by the stand-ins whose devices are not in a JWT registry.

Invariant: the in-test observer is answered first — accepted with the stand-in's observer
password, refused with a wrong one — and only then is a device identified; so no device rule can
lock the observer out, and the observer's name never reaches a device check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .broker import ACCEPTED, NOT_AUTHORIZED, Broker

# (CONNACK code, reason, device or None, token expiry or 0, claims, kid): Broker.authenticate's.
Outcome = tuple[int, str, str | None, float, dict[str, Any], str | None]


def authenticate(
    broker: Broker,
    username: str | None,
    password: bytes | None,
    identify: Callable[[], tuple[str | None, str]],
) -> Outcome:
    """The observer's answer, or else `identify()`'s: (device, "ok") to accept the device,
    (None, why) to refuse it as not authorized."""
    observer = broker.observer_check(username, password)
    if observer is not None:
        reason = "observer" if observer == ACCEPTED else "wrong observer password"
        return observer, reason, None, 0.0, {}, None
    device, reason = identify()
    if device is None:
        return NOT_AUTHORIZED, reason, None, 0.0, {}, None
    return ACCEPTED, "ok", device, 0.0, {}, None
