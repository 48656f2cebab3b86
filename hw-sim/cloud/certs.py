"""A throw-away certificate authority: CA, server and client (device) certificates.

The one test CA of the project: the mTLS stand-ins (AWS IoT Core, the CLI's `aws issue`), the
IoT Hub stand-in's server certificate (azure.server_tls) and the tests' TLS brokers
(tests/uplink_harness.py, bench/bench_uplink.py) all use it.

Invariant: every file is written under the folder given; keys are written mode 0600. A folder that
already holds `ca.pem` and `ca.key` is reused, so the CLI's `serve` and `issue` agree on one CA;
a new folder gets a new CA (a test wanting a second, untrusted CA gives it another folder).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 30


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class CertificateAuthority:
    def __init__(self, folder: Path, cn: str = "gatewayd stand-in CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_file = folder / "ca.pem"
        key_file = folder / "ca.key"
        if self.ca_file.exists() and key_file.exists():
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self.key = key
            self.cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        _write_key(self.key, key_file)
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        name: str,
        server: bool = False,
        dns_names: tuple[str, ...] | None = None,
        ips: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """(certificate file, key file) named `name`, `name` its common name; a server
        certificate is for localhost and 127.0.0.1, or only for `dns_names` when given, and
        for `ips` too."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            alt: list[x509.GeneralName] = (
                [x509.DNSName(n) for n in dns_names]
                if dns_names is not None
                else [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_file, key_file = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return cert_file, key_file


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def der_of(pem: bytes) -> bytes:
    """The DER bytes of a PEM certificate: what a TLS peer presents."""
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
