"""systemd/install.sh --root: the staged tree, its permissions, idempotence and --uninstall."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent
SCRIPT = REPO / "systemd" / "install.sh"


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_into_root_gives_tree_permissions_and_public_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = _install(root)
    assert r.returncode == 0, r.stderr
    etc = root / "etc" / "gatewayd"
    assert _mode(etc) == 0o750
    assert _mode(etc / "gateway.toml") == 0o640
    assert _mode(etc / "device.key") == 0o600
    assert (etc / "gateway.toml").read_text() == (
        REPO / "config" / "examples" / "gateway.toml"
    ).read_text()
    unit = root / "etc" / "systemd" / "system" / "gatewayd.service"
    assert unit.read_text() == (REPO / "systemd" / "gatewayd.service").read_text()
    assert _mode(unit) == 0o644
    # The public key printed is the one of the generated private key, also kept beside it.
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----"), r.stdout
    assert (etc / "device.pub").read_text() == r.stdout
    check = subprocess.run(
        [sys.executable, "-m", "gatewayd", "keygen", "--out", str(etc / "device.key"), "--reuse"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout == r.stdout
    actions = (root / "install-actions.log").read_text().splitlines()
    assert any(a.startswith("useradd --system") and a.endswith(" gatewayd") for a in actions)
    assert "chown gatewayd:gatewayd /etc/gatewayd/device.key" in actions
    assert "systemctl enable gatewayd.service" in actions
    assert any(a.startswith("python3 -m venv /opt/gatewayd/venv") for a in actions)


def test_second_install_keeps_config_and_key(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _install(root)
    assert first.returncode == 0, first.stderr
    cfg = root / "etc" / "gatewayd" / "gateway.toml"
    cfg.write_text(cfg.read_text() + "\n# edited on site\n")
    second = _install(root)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout, "the same device key, so the same public key"
    assert cfg.read_text().endswith("# edited on site\n")


def test_uninstall_keeps_identity_and_buffer_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    state = root / "var" / "lib" / "gatewayd"
    state.mkdir(parents=True)
    (state / "buffer.sqlite").write_bytes(b"")
    r = _install(root, "--uninstall")
    assert r.returncode == 0, r.stderr
    assert not (root / "etc" / "systemd" / "system" / "gatewayd.service").exists()
    assert not (root / "opt" / "gatewayd").exists()
    assert (root / "etc" / "gatewayd" / "device.key").exists()
    assert (state / "buffer.sqlite").exists()
    assert "systemctl disable --now gatewayd.service" in (root / "install-actions.log").read_text()
    r = _install(root, "--uninstall", "--purge")
    assert r.returncode == 0, r.stderr
    assert not (root / "etc" / "gatewayd").exists() and not state.exists()
    assert "userdel gatewayd" in (root / "install-actions.log").read_text()
