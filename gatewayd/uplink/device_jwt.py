"""Device JWTs (Cloud IoT Core style): signed RS256/ES256 by the device's private key.

The key file is refused if group or others can read it; the key and tokens are never logged.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from gatewayd.errors import PlacedError


class DeviceKeyError(PlacedError):
    """The device key cannot be used."""


def load_private_key(path: str | Path, algorithm: str) -> Any:
    """Load a PEM private key; refuses group/world-readable files and keys of the wrong kind."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DeviceKeyError(
            str(p),
            f"cannot read the device key: {exc.strerror}",
            "create one with `gatewayd keygen` or fix [uplink.auth] private_key",
        ) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DeviceKeyError(
            str(p),
            f"is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
            f"run `chmod 600 {p}`",
        )
    try:
        key = load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise DeviceKeyError(
            str(p), "is not an unencrypted PEM private key", "create one with `gatewayd keygen`"
        ) from exc
    want = ec.EllipticCurvePrivateKey if algorithm == "ES256" else rsa.RSAPrivateKey
    if not isinstance(key, want):
        raise DeviceKeyError(
            str(p),
            f"is not a key for {algorithm}",
            "set [uplink.auth] algorithm to match the key, or create a new key",
        )
    return key


def mint_jwt(
    key: Any,
    algorithm: str,
    audience: str,
    lifetime_s: int,
    key_id: str | None = None,
    extra: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A token valid from `now` for `lifetime_s`; `extra` claims never override iat/exp/aud."""
    import jwt

    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {**(extra or {}), "iat": iat, "exp": iat + lifetime_s, "aud": audience}
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def generate_key(path: Path, algorithm: str) -> bytes:
    """Create a private key file (mode 0600) and return the public key PEM to register."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pub
