"""The uplink's one error type: a connection attempt that failed, with its reason in words."""

from __future__ import annotations

from gatewayd.errors import GatewaydError


class UplinkError(GatewaydError):
    """A connection attempt failed; `reason` says why (refused, unreachable, ...)."""

    def __init__(self, reason: str, auth_refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth_refused = auth_refused
