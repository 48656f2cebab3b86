"""A release's manifest: its signature by the operator's release key, and the files it lists.

The manifest is JSON text, signed as bytes (no canonical form to agree on):

    {"format": 1, "version": "0.2.0", "buffer_format": 1,
     "files": [{"name": "gatewayd-0.2.0-py3-none-any.whl", "size": 123, "sha256": "ab.."}, ...]}

`files` are the wheels of the release and of every dependency: the new venv is built from them
alone (pip --no-index). The signature is base64 of an Ed25519 signature, or of a DER ECDSA P-256
/ SHA-256 one (ES256), over the manifest's UTF-8 bytes.

Invariants: `parse_manifest` returns only a manifest whose signature verified, whose names are
plain wheel file names, whose total size is within the bound, and that holds gatewayd itself at
the version it declares. cryptography is imported only by the functions that use a key: the
daemon imports this module at every start (UpdateRefused, Manifest), and cryptography's Rust
extension is ~9 MB of RSS that a gateway without self-update never needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.errors import GatewaydError

from . import READABLE_BUFFER_FORMATS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+_-]{0,40}$")
WHEEL_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\.whl$")


class UpdateRefused(GatewaydError):
    """An update that is not installed: the reason says which check failed and what to do."""


@dataclass(frozen=True, slots=True)
class ReleaseFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    buffer_format: int
    files: tuple[ReleaseFile, ...]
    digest: str  # sha256 of the manifest text: names this exact release

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UpdateRefused(
            f"update.release_key: cannot read {path}: {exc.strerror}; check the path"
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UpdateRefused(
            f"update.release_key: {path} is not a PEM public key; give the release key's public "
            "half (openssl pkey -pubout)"
        ) from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UpdateRefused(
        f"update.release_key: {path} is a {type(key).__name__}; use an Ed25519 or P-256 key"
    )


def verify_signature(key: Any, text: bytes, signature_b64: Any) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if not isinstance(signature_b64, str):
        raise UpdateRefused("signature: missing; sign the manifest with the release key")
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpdateRefused("signature: not base64; send base64 of the signature bytes") from exc
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, text)
        else:
            key.verify(sig, text, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise UpdateRefused(
            "signature: does not verify with update.release_key; sign this exact manifest text "
            "with the operator's release key"
        ) from exc


def parse_manifest(text: Any, signature_b64: Any, key: Any, max_bytes: int) -> Manifest:
    """Verify, then validate. Raises UpdateRefused naming the first check that failed."""
    if not isinstance(text, str) or not text:
        raise UpdateRefused("manifest: missing; send the release's manifest as a JSON string")
    raw = text.encode()
    verify_signature(key, raw, signature_b64)  # before reading anything in it
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise UpdateRefused(f"manifest: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise UpdateRefused("manifest: expected an object with format = 1")
    version = doc.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise UpdateRefused(f"manifest.version: {version!r} is not a version such as 0.2.0")
    fmt = doc.get("buffer_format")
    if not isinstance(fmt, int) or fmt not in READABLE_BUFFER_FORMATS:
        raise UpdateRefused(
            f"manifest.buffer_format: {fmt!r} cannot be read by this release (it reads "
            f"{sorted(READABLE_BUFFER_FORMATS)}), so a rollback would lose the buffer; first "
            "install a release that reads both formats"
        )
    files = []
    for i, f in enumerate(doc.get("files") or ()):
        ok = (
            isinstance(f, dict)
            and isinstance(f.get("name"), str)
            and WHEEL_RE.match(f["name"])
            and isinstance(f.get("size"), int)
            and f["size"] > 0
            and isinstance(f.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
        )
        if not ok:
            raise UpdateRefused(
                f"manifest.files[{i}]: expected {{name: '<wheel>.whl', size > 0, sha256: hex}}"
            )
        files.append(ReleaseFile(f["name"], f["size"], f["sha256"]))
    if len({f.name for f in files}) != len(files):
        raise UpdateRefused("manifest.files: a name is listed twice")
    prefix = f"gatewayd-{version.replace('-', '_')}-"
    if not any(f.name.startswith(prefix) for f in files):
        raise UpdateRefused(f"manifest.files: no {prefix}*.whl; the release must hold gatewayd")
    m = Manifest(version, fmt, tuple(files), hashlib.sha256(raw).hexdigest())
    if m.total_bytes > max_bytes:
        raise UpdateRefused(
            f"manifest.files: {m.total_bytes} bytes in all, above update.max_bytes = {max_bytes}; "
            "raise the bound or ship fewer files"
        )
    return m


def check_file(path: Path, f: ReleaseFile) -> None:
    """The downloaded file is the one the manifest names, byte for byte."""
    size = path.stat().st_size
    if size != f.size:
        raise UpdateRefused(f"{f.name}: {size} bytes, the manifest says {f.size}; send it again")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != f.sha256:
        raise UpdateRefused(
            f"{f.name}: sha256 {h.hexdigest()} differs from the manifest's {f.sha256}; the file "
            "was changed or corrupted on the way: nothing was installed"
        )


# -- the operator's side: making a signed release (tests, bench, `gatewayd release`) ----------


def make_manifest(version: str, wheels: list[Path], buffer_format: int = 1) -> str:
    files = []
    for w in sorted(wheels, key=lambda p: p.name):
        data = w.read_bytes()
        files.append(
            {"name": w.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    doc = {"format": 1, "version": version, "buffer_format": buffer_format, "files": files}
    return json.dumps(doc, indent=1)


def sign(private_key_pem: bytes, text: str) -> str:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        sig = key.sign(text.encode())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    else:
        raise ValueError(f"{type(key).__name__}: use an Ed25519 or P-256 release key")
    return base64.b64encode(sig).decode()
