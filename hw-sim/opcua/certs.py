"""Self-signed OPC UA application certificates (client or server) for tests and the sim."""

from __future__ import annotations

import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID


def make_certificate(folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A DER certificate and PEM key for application `uri` (OPC UA wants the URI in the SAN)."""
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )

    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = generate_self_signed_app_certificate(
        key,
        name,
        {},
        [
            x509.UniformResourceIdentifier(uri),
            x509.DNSName(socket.gethostname()),
            x509.DNSName("localhost"),
        ],
        extended=[use],
    )
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path
