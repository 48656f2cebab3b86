"""systemd/install.sh --root: the staged tree, its permissions, idempotence and --uninstall."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from gatewayd import __version__

REPO = Path(__file__).parent.parent.parent
SCRIPT = REPO / "systemd" / "install.sh"
REL = f"/opt/gatewayd/releases/{__version__}"  # this version's venv (gatewayd/lifecycle)


def _install(
    root: Path, *extra: str, script: Path = SCRIPT, path_prefix: str = ""
) -> subprocess.CompletedProcess[str]:
    path = f"{path_prefix}{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        ["bash", str(script), "--root", str(root), *extra],
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
    assert any(a.startswith(f"python3 -m venv {REL}") for a in actions)


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


def _actions(root: Path) -> list[str]:
    return (root / "install-actions.log").read_text().splitlines()


def test_gatewayd_is_put_on_path_and_removed_with_the_service(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = _install(root)
    assert r.returncode == 0, r.stderr
    link = root / "usr" / "local" / "bin" / "gatewayd"
    assert link.is_symlink() and os.readlink(link) == "/opt/gatewayd/current/bin/gatewayd"
    assert "members of the gatewayd group" in r.stderr
    assert _install(root, "--uninstall").returncode == 0
    assert not link.is_symlink()


def test_uninstall_leaves_a_gatewayd_it_did_not_install(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    link = root / "usr" / "local" / "bin" / "gatewayd"
    link.unlink()
    link.symlink_to("/usr/bin/other-gatewayd")
    assert _install(root, "--uninstall").returncode == 0
    assert os.readlink(link) == "/usr/bin/other-gatewayd"


def test_purge_removes_the_group_even_with_members(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    assert _install(root, "--uninstall", "--purge").returncode == 0
    actions = _actions(root)
    assert actions.index("userdel gatewayd") < actions.index("groupdel gatewayd")


def test_read_only_checkout_is_built_from_a_copy_and_left_clean(tmp_path: Path) -> None:
    src = tmp_path / "checkout"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__"),
    )
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    for p in [src, *src.rglob("*")]:
        if not p.is_symlink():
            p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)
    try:
        root = tmp_path / "root"
        r = _install(root, script=src / "systemd" / "install.sh")
        assert r.returncode == 0, r.stderr
        pip = [a for a in _actions(root) if a.startswith(f"{REL}/bin/pip install")]
        assert len(pip) == 1, _actions(root)
        built_from = Path(pip[0].split()[-1])
        # pip builds in the folder it is given (build/, *.egg-info): never the checkout.
        assert src not in [built_from, *built_from.parents], pip[0]
        assert not built_from.exists(), "the build copy is removed"
        assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before
    finally:
        for p in [src, *src.rglob("*")]:
            if not p.is_symlink():
                p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o200)


def _fake_arch(tmp_path: Path, dpkg_arch: str, machine: str) -> str:
    """A PATH prefix whose dpkg and uname report another machine."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(parents=True)
    for name, answer, flag, real in (
        ("dpkg", dpkg_arch, "--print-architecture", "/usr/bin/dpkg"),
        ("uname", machine, "-m", "/bin/uname"),
    ):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\n[ "$1" = {flag} ] && echo {answer} || exec {real} "$@"\n')
        tool.chmod(0o755)
    return f"{bin_dir}:"


def test_32_bit_arm_uses_debian_cryptography_and_wheels_only(tmp_path: Path) -> None:
    """armv7l: PyPI has no cffi wheel (armv6l: no cryptography either); Debian has both. The
    userland decides: 32-bit Pi OS on a Pi 4 has an aarch64 kernel under armhf packages."""
    for dpkg_arch, machine in (("armhf", "armv7l"), ("armhf", "armv6l"), ("armhf", "aarch64")):
        case = tmp_path / f"{dpkg_arch}-{machine}"
        root = case / "root"
        r = _install(root, path_prefix=_fake_arch(case, dpkg_arch, machine))
        assert r.returncode == 0, r.stderr
        actions = _actions(root)
        assert (
            "apt-get install -y --no-install-recommends python3-venv python3-cryptography "
            "python3-cffi"
        ) in actions
        assert f"python3 -m venv --system-site-packages {REL}" in actions
        pip = next(a for a in actions if a.startswith(f"{REL}/bin/pip install"))
        assert "--only-binary=:all:" in pip.split()


def test_64_bit_uses_plain_wheels_unless_asked(tmp_path: Path) -> None:
    root = tmp_path / "a" / "root"
    prefix = _fake_arch(tmp_path / "a", "arm64", "aarch64")
    assert _install(root, path_prefix=prefix).returncode == 0
    assert f"python3 -m venv {REL}" in _actions(root)
    assert not any("python3-cffi" in a for a in _actions(root))
    root = tmp_path / "b" / "root"
    assert _install(root, "--system-crypto").returncode == 0
    assert f"python3 -m venv --system-site-packages {REL}" in _actions(root)
