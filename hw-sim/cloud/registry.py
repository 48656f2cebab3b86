"""Device registry of the cloud stand-in: devices, their public keys, and the JWT checks.

Checks follow Cloud IoT Core: the password is a JWT signed (RS256 or ES256) by one of the device's
registered keys; `iat` and `exp` are required, `iat` may be at most 10 minutes in the future,
the lifetime at most 24 hours, and `aud` must be the project id. A device has up to MAX_KEYS
registered keys at once (Cloud IoT Core's limit), any of which may sign: that is what lets a
device rotate its key (register the new one, switch, remove the old one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKEW_S = 600
MAX_KEYS = 3
MAX_LIFETIME_S = 24 * 3600


@dataclass
class Device:
    id: str
    public_keys: list[bytes] = field(default_factory=list)  # PEM


@dataclass(frozen=True)
class AuthResult:
    device: str | None
    reason: str  # "ok" or why refused
    exp: float = 0.0
    claims: dict[str, Any] = field(default_factory=dict)
    kid: str | None = None


class Registry:
    def __init__(
        self,
        project: str = "demo-project",
        region: str = "local",
        registry: str = "gateways",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # the cloud's clock; tests skew it against the gateway's
        self.project = project
        self.region = region
        self.registry = registry
        self.devices: dict[str, Device] = {}

    def add(self, device_id: str, public_key_pem: bytes | str | Path) -> Device:
        if isinstance(public_key_pem, Path):
            public_key_pem = public_key_pem.read_bytes()
        if isinstance(public_key_pem, str):
            public_key_pem = public_key_pem.encode()
        dev = self.devices.setdefault(device_id, Device(device_id))
        if public_key_pem in dev.public_keys:
            return dev
        if len(dev.public_keys) >= MAX_KEYS:
            raise ValueError(
                f"device {device_id!r} already has {MAX_KEYS} keys; remove one before adding"
            )
        dev.public_keys.append(public_key_pem)
        return dev

    def remove(self, device_id: str, public_key_pem: bytes | str) -> None:
        """Unregister one key (ValueError if the device does not have it)."""
        if isinstance(public_key_pem, str):
            public_key_pem = public_key_pem.encode()
        dev = self.devices.get(device_id)
        if dev is None or public_key_pem not in dev.public_keys:
            raise ValueError(f"device {device_id!r} has no such key")
        dev.public_keys.remove(public_key_pem)

    def device_of(self, client_id: str) -> str | None:
        parts = client_id.split("/")
        if (
            len(parts) == 8
            and parts[0] == "projects"
            and parts[2] == "locations"
            and parts[4] == "registries"
            and parts[6] == "devices"
            and parts[1] == self.project
            and parts[5] == self.registry
        ):
            return parts[7]
        return None

    def authenticate(self, client_id: str, password: bytes | None) -> AuthResult:
        import jwt

        device_id = self.device_of(client_id)
        if device_id is None:
            return AuthResult(None, f"client id {client_id!r} is not a device of this registry")
        dev = self.devices.get(device_id)
        if dev is None:
            return AuthResult(None, f"device {device_id!r} is not registered")
        if not password:
            return AuthResult(None, "no JWT in the password")
        token = password.decode(errors="replace")
        last = "no key registered"
        for pem in dev.public_keys:
            try:
                # Time claims are checked below against the registry's own clock.
                claims = jwt.decode(
                    token,
                    pem,
                    algorithms=["RS256", "ES256"],
                    audience=self.project,
                    options={
                        "require": ["iat", "exp", "aud"],
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
            except jwt.InvalidAudienceError:
                return AuthResult(None, "wrong audience")
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
                # Another algorithm's key, or this key did not sign it: try the device's next key.
                last = "signature does not match a registered key"
                continue
            except jwt.PyJWTError as exc:
                return AuthResult(None, f"invalid token: {exc}")
            now = self.clock()
            if not isinstance(claims["iat"], int | float) or not isinstance(
                claims["exp"], int | float
            ):
                return AuthResult(None, "iat and exp must be numbers")
            if claims["exp"] <= now:
                return AuthResult(None, "token expired")
            if claims["iat"] > now + SKEW_S:
                return AuthResult(None, "iat is in the future")
            if claims["exp"] - claims["iat"] > MAX_LIFETIME_S:
                return AuthResult(None, "lifetime over 24 h")
            kid = jwt.get_unverified_header(token).get("kid")
            return AuthResult(device_id, "ok", float(claims["exp"]), claims, kid)
        return AuthResult(None, last)
