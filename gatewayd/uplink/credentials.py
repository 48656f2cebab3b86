"""What the uplink presents to the broker, and when it must be renewed.

One class per kind; the session asks each for the username and password at every connect and
for the monotonic time at which it must reconnect with fresh credentials:
- `NoAuth`, `Password`: nothing to renew (`refresh_at` is infinity);
- `DeviceJwt`: a token signed by the device key, minted at every connect; the session is
  refreshed at 85 % of the token's life (REFRESH_AT), but never later than REFRESH_DRAIN_S before
  expiry, so the messages in flight at the refresh can still be acknowledged;
- a client certificate (mTLS, [uplink.tls] cert_file/key_file) is no credential object: tls.py
  reads the files at every connect, so a renewed certificate takes effect at the next
  reconnect; nothing to schedule.

The username and string claims are templates over the [uplink] values (`{device}`, `{project}`,
...), so one file serves a fleet and each gateway appears under its own name.

Invariants: the key and the tokens are never logged; a token's expiry is tracked on the monotonic
clock from the moment it was minted, so a wall-clock step cannot postpone its refresh.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from gatewayd.config import AuthConfig, UplinkConfig
from gatewayd.metrics import Metrics

from .device_jwt import load_private_key, mint_jwt

REFRESH_AT = 0.85  # of the token's lifetime
# At refresh, in-flight messages get until shortly before expiry to be acknowledged; keep at
# least this long for it (at most half the life of a very short token), or a loaded gateway
# re-sends them as duplicates after the reconnect.
REFRESH_DRAIN_S = 6.0


class Credentials(Protocol):
    username: str | None  # None: no username and password are sent
    remint_on_refusal: bool  # a refused CONNECT may be a stale credential: retry once, at once

    def load(self) -> None:
        """Load what is needed before the first connect (raises if it cannot be used)."""

    def password(self) -> str | None:
        """The password for the next CONNECT (a fresh token for JWTs)."""

    def refresh_at(self) -> float:
        """Monotonic time at which the session should reconnect with fresh credentials."""

    def drain_until(self, puback_timeout_s: float) -> float:
        """Monotonic time until which a refresh may wait for messages in flight."""


class NoAuth:
    username: str | None = None
    remint_on_refusal = False

    def load(self) -> None:
        pass

    def password(self) -> str | None:
        return None

    def refresh_at(self) -> float:
        return float("inf")

    def drain_until(self, puback_timeout_s: float) -> float:
        return time.monotonic()


class Password(NoAuth):
    def __init__(self, username: str, password: str | None) -> None:
        self.username = username
        self._password = password

    def password(self) -> str | None:
        return self._password


class DeviceJwt:
    """A device JWT (RS256/ES256) in the MQTT password, re-minted at every connect."""

    remint_on_refusal = True

    def __init__(
        self,
        auth: AuthConfig,
        key_path: Path,
        wall_clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.auth = auth
        self.username: str | None = auth.username
        self.key_path = key_path
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.expires_at = 0.0  # monotonic, of the current token
        self._key: Any = None
        # A key that exists but is unsafe or unusable stops the daemon at start; a key not
        # provisioned yet does not: the gateway buffers and `run` retries (supervised).
        if key_path.exists():
            self._key = load_private_key(key_path, auth.algorithm)

    def load(self) -> None:
        if self._key is None:
            self._key = load_private_key(self.key_path, self.auth.algorithm)

    def password(self) -> str | None:
        a = self.auth
        self.metrics.inc("uplink_tokens_minted")
        wall = self.wall_clock()
        # iat is a whole second, so the token's life started up to 1 s before now.
        self.expires_at = time.monotonic() + a.lifetime_s - (wall - int(wall))
        return mint_jwt(
            self._key, a.algorithm, a.audience, a.lifetime_s, a.key_id, dict(a.claims), wall
        )

    def refresh_at(self) -> float:
        life = self.auth.lifetime_s
        return self.expires_at - max((1 - REFRESH_AT) * life, min(REFRESH_DRAIN_S, life / 2))

    def drain_until(self, puback_timeout_s: float) -> float:
        return min(time.monotonic() + min(5.0, puback_timeout_s), self.expires_at - 0.5)


def credentials_for(
    cfg: UplinkConfig, key_dir: Path, wall_clock: Callable[[], float], metrics: Metrics
) -> Credentials:
    values = cfg.template_values()
    a = dataclasses.replace(
        cfg.auth,
        username=cfg.auth.username.format(**values),
        claims=tuple(
            (k, v.format(**values) if isinstance(v, str) else v) for k, v in cfg.auth.claims
        ),
    )
    if a.kind == "jwt":
        path = Path(a.private_key)
        return DeviceJwt(a, path if path.is_absolute() else key_dir / path, wall_clock, metrics)
    if a.kind == "password":
        return Password(a.username, a.password)
    return NoAuth()
