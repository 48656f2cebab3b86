"""install.sh lays out releases as self-update expects (gatewayd/lifecycle): a venv per version,
`current` and `previous` links, the unit through `current`, and --uninstall removes them all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gatewayd import __version__

REPO = Path(__file__).parent.parent.parent


def _install(root: Path, *extra: str, source: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", str(source / "systemd" / "install.sh"), "--root", str(root), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_install_lays_out_releases_with_current_and_previous(tmp_path: Path) -> None:
    root = tmp_path / "root"
    r = _install(root)
    assert r.returncode == 0, r.stderr
    opt = root / "opt" / "gatewayd"
    releases = opt / "releases"
    assert (releases / __version__ / ".complete").exists()
    assert os.readlink(releases / "current") == __version__
    assert os.readlink(releases / "previous") == __version__  # the start check has code to run
    assert os.readlink(opt / "current") == "releases/current"
    assert not (opt / "venv").exists()
    assert os.readlink(root / "usr/local/bin/gatewayd") == "/opt/gatewayd/current/bin/gatewayd"
    actions = (root / "install-actions.log").read_text().splitlines()
    assert "chown gatewayd:gatewayd /opt/gatewayd/releases" in actions
    assert not any(a.startswith("chown -R") for a in actions)  # installed releases stay root's


def test_a_new_version_becomes_current_and_the_old_one_previous(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    src = tmp_path / "src"
    shutil.copytree(
        REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__")
    )
    pyproject = src / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'"{__version__}"', '"9.9.9"', 1))
    r = _install(root, source=src)
    assert r.returncode == 0, r.stderr
    releases = root / "opt" / "gatewayd" / "releases"
    assert os.readlink(releases / "current") == "9.9.9"
    assert os.readlink(releases / "previous") == __version__
    assert not list(releases.glob(".*.tmp"))


def test_uninstall_removes_every_release_and_the_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root).returncode == 0
    releases = root / "opt" / "gatewayd" / "releases"
    (releases / "0.0.9").mkdir()  # one the daemon built
    (releases / "0.0.9" / ".complete").write_text("x\n")
    r = _install(root, "--uninstall")
    assert r.returncode == 0, r.stderr
    assert not (root / "opt" / "gatewayd").exists()
    assert not (root / "usr/local/bin/gatewayd").is_symlink()


def test_unit_runs_current_checks_from_previous_and_may_write_only_state_and_releases() -> None:
    s = _settings((REPO / "systemd" / "gatewayd.service").read_text())
    assert s["ExecStart"][0].startswith("/opt/gatewayd/current/bin/gatewayd run ")
    pre = s["ExecStartPre"][0]
    assert pre.startswith("-/opt/gatewayd/releases/previous/bin/python -I -m gatewayd.lifecycle ")
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/opt/gatewayd/releases"]
    assert s["StateDirectory"] == ["gatewayd"]
    assert s["Restart"] == ["always"]  # exit 75 after an update starts `current`
    assert "75" not in " ".join(s.get("RestartPreventExitStatus", []))
