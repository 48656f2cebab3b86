"""The uplink's one error type: a connection attempt that failed, with its reason in words."""

from __future__ import annotations

from gatewayd.errors import GatewaydError


class UplinkError(GatewaydError):
    """A connection attempt failed; `reason` says why (refused, unreachable, ...).

    `reason` is short (it becomes the status line and the `uplink_last_error` label); `fix`, when
    known, names the settings to check and goes into the log line.
    """

    def __init__(self, reason: str, auth_refused: bool = False, fix: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth_refused = auth_refused
        self.fix = fix
