"""The release manifest's checks, with real keys of both kinds and real files: what is refused,
and that the refusal names the check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gatewayd.lifecycle.verify import (
    UpdateRefused,
    check_file,
    load_public_key,
    make_manifest,
    parse_manifest,
    sign,
)


def _pair(tmp_path: Path, kind: str) -> tuple[bytes, Path]:
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pub = tmp_path / f"{kind}.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, pub


def _wheels(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "gatewayd-0.2.0-py3-none-any.whl", tmp_path / "dep-1.0-py3-none-any.whl"]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 1000)
    return files


@pytest.mark.parametrize("kind", ["ed25519", "p256"])
def test_a_signed_manifest_verifies_and_its_files_check(tmp_path: Path, kind: str) -> None:
    pem, pub = _pair(tmp_path, kind)
    files = _wheels(tmp_path)
    text = make_manifest("0.2.0", files)
    m = parse_manifest(text, sign(pem, text), load_public_key(pub), 10_000)
    assert m.version == "0.2.0" and m.total_bytes == 2000 and len(m.files) == 2
    for f in m.files:
        check_file(tmp_path / f.name, f)
    (tmp_path / m.files[0].name).write_bytes(b"\x07" * 1000)  # same size, other bytes
    with pytest.raises(UpdateRefused, match=r"sha256 .* differs"):
        check_file(tmp_path / m.files[0].name, m.files[0])


def test_refusals_name_their_check(tmp_path: Path) -> None:
    pem, pub = _pair(tmp_path, "ed25519")
    other_pem, _ = _pair(tmp_path, "p256")
    key = load_public_key(pub)
    files = _wheels(tmp_path)
    text = make_manifest("0.2.0", files)
    with pytest.raises(UpdateRefused, match="does not verify"):
        parse_manifest(text, sign(other_pem, text), key, 10_000)
    with pytest.raises(UpdateRefused, match="does not verify"):  # one byte of the text changed
        parse_manifest(text.replace("0.2.0", "0.2.1", 1), sign(pem, text), key, 10_000)
    with pytest.raises(UpdateRefused, match="signature: missing"):
        parse_manifest(text, None, key, 10_000)
    with pytest.raises(UpdateRefused, match=r"update\.max_bytes"):
        parse_manifest(text, sign(pem, text), key, 1999)
    bad = make_manifest("0.2.0", files, buffer_format=2)
    with pytest.raises(UpdateRefused, match="buffer_format: 2 cannot be read"):
        parse_manifest(bad, sign(pem, bad), key, 10_000)
    doc = json.loads(text)
    doc["files"][0]["name"] = "../../etc/passwd"
    evil = json.dumps(doc)
    with pytest.raises(UpdateRefused, match=r"manifest.files\[0\]"):
        parse_manifest(evil, sign(pem, evil), key, 10_000)
    no_gw = make_manifest("0.2.0", files[1:])
    with pytest.raises(UpdateRefused, match="must hold gatewayd"):
        parse_manifest(no_gw, sign(pem, no_gw), key, 10_000)


def test_only_ed25519_and_p256_release_keys_are_accepted(tmp_path: Path) -> None:
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(UpdateRefused, match="use an Ed25519 or P-256 key"):
        load_public_key(rsa_pub)
    with pytest.raises(UpdateRefused, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


def test_the_release_tool_prints_a_command_that_verifies(tmp_path: Path) -> None:
    import subprocess
    import sys

    pem, pub = _pair(tmp_path, "p256")
    (tmp_path / "release.key").write_bytes(pem)
    files = _wheels(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "gatewayd.lifecycle.release", "--version", "0.2.0", "--key",
         str(tmp_path / "release.key"), "--url", "http://ops/0.2.0", *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cmd = json.loads(r.stdout)
    assert cmd["command"] == "update" and cmd["url"] == "http://ops/0.2.0"
    m = parse_manifest(cmd["manifest"], cmd["signature"], load_public_key(pub), 10_000)
    assert m.version == cmd["version"] == "0.2.0"
