"""`fleet update`'s command, checked before anything is sent: the version, and with source mqtt
the files against the manifest (what the gateway would refuse after the transfer, refused first)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gatewayd.fleet.broker import FleetError
from gatewayd.fleet.update import check_command, command_digest
from gatewayd.lifecycle.verify import make_manifest, sign


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    w = tmp_path / "gatewayd-0.2.0-py3-none-any.whl"
    w.write_bytes(b"release bytes" * 1000)
    return w


def _command(wheel: Path, **source: str) -> dict[str, object]:
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    manifest = make_manifest("0.2.0", [wheel])
    return {"command": "update", "version": "0.2.0", "manifest": manifest,
            "signature": sign(key, manifest), **source}  # fmt: skip


def test_mqtt_source_takes_the_files_the_manifest_lists(wheel: Path) -> None:
    cmd = _command(wheel, source="mqtt")
    assert check_command(cmd, "0.2.0", [wheel]) == {wheel.name: wheel}
    assert check_command(_command(wheel, url="http://x/0.2.0"), "0.2.0", []) == {}


def test_a_changed_or_missing_file_or_another_version_is_refused(wheel: Path) -> None:
    cmd = _command(wheel, source="mqtt")
    with pytest.raises(FleetError, match="not among the files given"):
        check_command(cmd, "0.2.0", [])
    with pytest.raises(FleetError, match=r"installs '0\.2\.0', not '0\.3\.0'"):
        check_command(cmd, "0.3.0", [wheel])
    wheel.write_bytes(b"tampered")
    with pytest.raises(FleetError, match="not the file the manifest lists"):
        check_command(cmd, "0.2.0", [wheel])
    with pytest.raises(FleetError, match="not one"):
        check_command({"command": "ping"}, "0.2.0", [])


def test_the_state_file_is_tied_to_the_release_not_the_id(wheel: Path) -> None:
    cmd = _command(wheel, url="http://x/0.2.0")
    assert command_digest({**cmd, "id": "a"}) == command_digest({**cmd, "id": "b"})
    assert command_digest(cmd) != command_digest({**cmd, "url": "http://y/0.2.0"})


def test_the_cli_refuses_before_connecting(tmp_path: Path, wheel: Path) -> None:
    path = tmp_path / "update.json"
    path.write_text(json.dumps(_command(wheel, source="mqtt")))
    r = subprocess.run(
        [sys.executable, "-m", "gatewayd", "fleet", "update", "0.2.0", "--command", str(path),
         "--host", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "is not among the files given" in r.stderr
