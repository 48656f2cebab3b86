"""The shipped unit: valid for systemd, and hardened to an exposure score of 2.0 or better."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import require_binary

UNIT = Path(__file__).parent.parent.parent / "systemd" / "gatewayd.service"


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    # verify checks that ExecStart exists: point it at this venv's gatewayd, nothing else changes.
    gatewayd = Path(sys.executable).parent / "gatewayd"
    unit = tmp_path / "gatewayd.service"
    text = UNIT.read_text()
    assert "/opt/gatewayd/current/bin/gatewayd run" in text
    assert "/opt/gatewayd/releases/previous/bin/python -I -m gatewayd.lifecycle" in text
    text = text.replace("/opt/gatewayd/current/bin/gatewayd", str(gatewayd))
    unit.write_text(text.replace("/opt/gatewayd/releases/previous/bin/python", sys.executable))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # Unknown keys and bad values are only warnings: none is allowed.
    assert r.stderr.strip() == "", r.stderr


def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    r = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    print(f"\nsystemd-analyze security --offline=true gatewayd.service: exposure {score}")
    assert score <= 2.0, r.stdout


def test_unit_is_notify_with_watchdog_user_and_directories() -> None:
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert float(s["WatchdogSec"][0]) > 0
    assert set(s["After"][0].split()) >= {"network-online.target", "time-sync.target"}
    assert s["User"] == ["gatewayd"] and "DynamicUser" not in s
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["StateDirectory"] == ["gatewayd"]
    assert s["DevicePolicy"] == ["closed"]
    assert "char-ttyUSB rw" in s["DeviceAllow"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    # The daemon's stop takes under 5 s; systemd must not SIGKILL it before.
    assert float(s["TimeoutStopSec"][0]) >= 5


def test_config_and_key_are_read_only_and_shm_is_hidden() -> None:
    s = _settings(UNIT.read_text())
    # ConfigurationDirectory= would make /etc/gatewayd writable to the daemon (its key included).
    assert "ConfigurationDirectory" not in s
    assert "/etc/gatewayd" in s["ReadOnlyPaths"]
    assert s["ProtectSystem"] == ["strict"]
    # PrivateDevices=no keeps the host's /dev (hot-plugged ports); its /dev/shm is shared.
    assert s["PrivateDevices"] == ["no"]
    assert "/dev/shm" in " ".join(s["InaccessiblePaths"]).split()


def test_usb_serial_ports_are_allowed_without_their_driver_loaded_at_start() -> None:
    """char-ttyUSB names no major until usbserial is loaded; numbered entries need no driver."""
    s = _settings(UNIT.read_text())
    allowed = s["DeviceAllow"]
    for major in (188, 166):  # ttyUSB (usbserial), ttyACM (cdc_acm)
        for minor in range(16):
            assert f"/dev/char/{major}:{minor} rw" in allowed
    # Where modules can be loaded, load them first, so char-ttyUSB covers every minor.
    for unit in ("modprobe@usbserial.service", "modprobe@cdc_acm.service"):
        assert unit in " ".join(s["Wants"]).split() and unit in " ".join(s["After"]).split()
    # Nothing broader than serial ports: no glob, no other class, no other majors.
    for entry in allowed:
        node, _, access = entry.partition(" ")
        assert access == "rw", entry
        serial = r"char-tty(USB|ACM|AMA|S)|/dev/char/(188|166):([0-9]|1[0-5])"
        assert re.fullmatch(serial, node), entry


def test_reload_needs_only_the_shell() -> None:
    """/bin/kill is procps', absent from minimal Debian images; the shell's kill is always there."""
    s = _settings(UNIT.read_text())
    assert s["ExecReload"][0].startswith("/bin/sh -c "), s["ExecReload"]
