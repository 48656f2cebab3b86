"""`gatewayd keygen` and `gatewayd version`, as the install script uses them."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd import __version__


def _gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_keygen_writes_a_0600_key_and_prints_its_public_key(alg: str, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = tmp_path / "device.key"
    r = _gatewayd("keygen", "--alg", alg, "--out", str(key))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert r.stdout == public.decode()


def test_keygen_never_overwrites_and_reuse_prints_the_existing_public_key(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    first = _gatewayd("keygen", "--out", str(key))
    before = key.read_bytes()
    again = _gatewayd("keygen", "--out", str(key))
    assert again.returncode == 2
    assert "exists" in again.stderr
    assert key.read_bytes() == before
    reuse = _gatewayd("keygen", "--out", str(key), "--reuse")
    assert reuse.returncode == 0 and reuse.stdout == first.stdout
    key.chmod(0o644)
    loose = _gatewayd("keygen", "--out", str(key), "--reuse")
    assert loose.returncode == 2
    assert "chmod 600" in loose.stderr


def test_version_prints_package_version() -> None:
    r = _gatewayd("version")
    assert r.returncode == 0
    assert r.stdout.startswith(f"gatewayd {__version__} (Python 3.")
