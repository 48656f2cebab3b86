"""What the uplink presents to the broker, and when it must be renewed.

One class per kind; the session asks each for the username and password at every connect and
for the monotonic time at which it must reconnect with fresh credentials:
- `NoAuth`, `Password`: nothing to renew (`refresh_at` is infinity);
- `DeviceJwt`: a token signed by the device key (or, with a key ring, by the key the ring says:
  key rotation, gatewayd/lifecycle/keys.py), minted at every connect; the session is
  refreshed at 85 % of the token's life (REFRESH_AT), but never later than REFRESH_DRAIN_S before
  expiry, so the messages in flight at the refresh can still be acknowledged;
- `SasToken`: an Azure IoT Hub shared access signature signed with the device key
  (HMAC-SHA256 over the URL-encoded `{hub host}/devices/{device}` and the expiry), minted at
  every connect and refreshed on the same schedule as the JWT;
- `kind = "x509"` is a `Password` without a password: the username, and the client certificate;
- `AccessToken`: ThingsBoard's device access token as the username, no password (read from its
  file at every start of the uplink, so a new token takes effect at the next restart);
- a client certificate (mTLS, [uplink.tls] cert_file/key_file) is no credential object: tls.py
  reads the files at every connect, so a renewed certificate takes effect at the next
  reconnect; nothing to schedule.

The username and string claims are templates over the [uplink] values (`{device}`, `{project}`,
...), so one file serves a fleet and each gateway appears under its own name.

Invariants: the key and the tokens are never logged; a token's expiry is tracked on the monotonic
clock from the moment it was minted, so a wall-clock step cannot postpone its refresh.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gatewayd.config import AuthConfig, ConfigError, UplinkConfig
from gatewayd.metrics import Metrics

from .device_jwt import load_private_key, mint_jwt

if TYPE_CHECKING:
    from gatewayd.lifecycle.keys import KeyRing

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

    def connected(self) -> None:
        """The broker accepted the last CONNECT."""

    def refused(self, reason: str) -> None:
        """The broker refused the last CONNECT's credentials."""


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

    def connected(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass


class Password(NoAuth):
    def __init__(self, username: str, password: str | None) -> None:
        self.username = username
        self._password = password

    def password(self) -> str | None:
        return self._password


class AccessToken(NoAuth):
    """ThingsBoard: the device's access token is the MQTT username; nothing to renew."""

    def __init__(self, auth: AuthConfig, key_dir: Path) -> None:
        self.auth = auth
        self.username = auth.access_token
        self.path: Path | None = None
        if auth.access_token_file is not None:
            path = Path(auth.access_token_file)
            self.path = path if path.is_absolute() else key_dir / path

    def load(self) -> None:
        if self.path is None:
            return
        try:
            self.username = self.path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                "uplink.auth.access_token_file",
                f"{self.path}: cannot read it: {exc.strerror}",
                "write the device's access token into it, readable by gatewayd",
            ) from exc
        if not self.username:
            raise ConfigError(
                "uplink.auth.access_token_file",
                f"{self.path} is empty",
                "write the device's access token into it (ThingsBoard: Manage credentials)",
            )


class DeviceJwt:
    """A device JWT (RS256/ES256) in the MQTT password, re-minted at every connect."""

    remint_on_refusal = True

    def __init__(
        self,
        auth: AuthConfig,
        key_path: Path,
        wall_clock: Callable[[], float],
        metrics: Metrics,
        ring: KeyRing | None = None,
    ) -> None:
        self.auth = auth
        self.ring = ring
        self.username: str | None = auth.username
        self.key_path = key_path
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.expires_at = 0.0  # monotonic, of the current token
        self._key: Any = None
        # A key that exists but is unsafe or unusable stops the daemon at start; a key not
        # provisioned yet does not: the gateway buffers and `run` retries (supervised).
        if ring is not None:
            ring.check_current()
        elif key_path.exists():
            self._key = load_private_key(key_path, auth.algorithm)

    def load(self) -> None:
        if self.ring is not None:
            self.ring.signer(at_refresh=False)  # the current key: raises if unusable
        elif self._key is None:
            self._key = load_private_key(self.key_path, self.auth.algorithm)

    def password(self) -> str | None:
        a = self.auth
        key: Any = self._key
        alg: str = a.algorithm
        kid = a.key_id
        if self.ring is not None:
            # A candidate key is tried at a token refresh (and the first connect).
            at_refresh = time.monotonic() >= self.refresh_at()
            key, alg, kid = self.ring.signer(at_refresh)
        self.metrics.inc("uplink_tokens_minted")
        wall = self.wall_clock()
        # iat is a whole second, so the token's life started up to 1 s before now.
        self.expires_at = time.monotonic() + a.lifetime_s - (wall - int(wall))
        return mint_jwt(key, alg, a.audience, a.lifetime_s, kid, dict(a.claims), wall)

    def connected(self) -> None:
        if self.ring is not None:
            self.ring.connected()

    def refused(self, reason: str) -> None:
        if self.ring is not None:
            self.ring.refused(reason)

    def refresh_at(self) -> float:
        if self.ring is not None and self.ring.refresh_now():
            return 0.0  # commit_key: reconnect with the candidate now (drained like a refresh)
        return _refresh_at(self.expires_at, self.auth.lifetime_s)

    def drain_until(self, puback_timeout_s: float) -> float:
        return _drain_until(self.expires_at, puback_timeout_s)


def _refresh_at(expires_at: float, life: float) -> float:
    return expires_at - max((1 - REFRESH_AT) * life, min(REFRESH_DRAIN_S, life / 2))


def _drain_until(expires_at: float, puback_timeout_s: float) -> float:
    return min(time.monotonic() + min(5.0, puback_timeout_s), expires_at - 0.5)


def sas_token(resource: str, key: bytes, expiry: int) -> str:
    """`SharedAccessSignature sr=..&sig=..&se=..` for `resource` (host/devices/id), as IoT Hub
    and its device SDKs build it: the URL-encoded resource and the expiry are signed."""
    sr = urllib.parse.quote(resource, safe="")
    digest = hmac.new(key, f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"


class SasToken:
    """An Azure IoT Hub SAS token in the MQTT password, minted at every connect.

    The resource is the username's host part (`{hub}.azure-devices.net`) and `/devices/{id}`,
    so a hub in another cloud (azure-devices.cn) needs only its username set.
    """

    remint_on_refusal = True

    def __init__(
        self,
        auth: AuthConfig,
        device: str,
        key_dir: Path,
        wall_clock: Callable[[], float],
        metrics: Metrics,
    ) -> None:
        self.auth = auth
        self.username: str | None = auth.username
        self.resource = f"{auth.username.split('/', 1)[0]}/devices/{device}"
        self.key_path = None
        if auth.device_key_file is not None:
            path = Path(auth.device_key_file)
            self.key_path = path if path.is_absolute() else key_dir / path
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.expires_at = 0.0  # monotonic, of the current token
        self._key: bytes | None = None
        if auth.device_key is not None or (self.key_path and self.key_path.exists()):
            self.load()

    def load(self) -> None:
        if self._key is not None:
            return
        place = "uplink.auth.device_key"
        text = self.auth.device_key
        if self.key_path is not None:
            place = "uplink.auth.device_key_file"
            try:
                text = self.key_path.read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    place,
                    f"{self.key_path}: cannot read it: {exc.strerror}",
                    "write the device's primary key (base64) into it, readable by gatewayd",
                ) from exc
        try:
            self._key = base64.b64decode(text or "", validate=True)
        except (binascii.Error, ValueError):
            self._key = b""
        if not self._key:
            raise ConfigError(
                place,
                "not a base64 key",
                "copy the device's primary key from the hub (Devices > the device > Primary key)",
            )

    def password(self) -> str | None:
        assert self._key is not None
        self.metrics.inc("uplink_tokens_minted")
        wall = self.wall_clock()
        expiry = int(wall) + self.auth.lifetime_s
        self.expires_at = time.monotonic() + expiry - wall
        return sas_token(self.resource, self._key, expiry)

    def refresh_at(self) -> float:
        return _refresh_at(self.expires_at, self.auth.lifetime_s)

    def drain_until(self, puback_timeout_s: float) -> float:
        return _drain_until(self.expires_at, puback_timeout_s)

    def connected(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass  # a device key cannot be rotated from here (key rotation is for JWT keys)


def credentials_for(
    cfg: UplinkConfig,
    key_dir: Path,
    wall_clock: Callable[[], float],
    metrics: Metrics,
    ring: KeyRing | None = None,
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
        return DeviceJwt(
            a, path if path.is_absolute() else key_dir / path, wall_clock, metrics, ring
        )
    if a.kind == "sas":
        return SasToken(a, cfg.device, key_dir, wall_clock, metrics)
    if a.kind == "password":
        return Password(a.username, a.password)
    if a.kind == "access_token":
        return AccessToken(a, key_dir)
    if a.kind == "x509":  # the client certificate is the credential (tls.py)
        return Password(a.username, None)
    return NoAuth()
