"""Modbus `backoff_base_s` / `backoff_cap_s` never had an effect: still accepted, and `gatewayd
check` (a real process) warns naming each one's place, once per device that gives it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import gateway_toml, write_config

POINTS = '[[devices.points]]\nid = "t"\ntable = "holding"\naddress = 0\n'
RTU = """
[[devices]]
id = "meter"
driver = "modbus_rtu"
serial_port = "/dev/ttyUSB7"
unit = 2
backoff_cap_s = 120
[[devices.points]]
id = "e"
table = "input"
address = 0
"""


def _check(tmp_path: Path, device_keys: str, tail: str = "") -> subprocess.CompletedProcess[str]:
    text = gateway_toml(tmp_path / "state", 1883, 1502, device_keys + POINTS, tail=tail)
    cfg = write_config(tmp_path / "gateway.toml", text)
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _deprecated(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "option_deprecated" in ln]


def test_check_accepts_them_and_warns_with_place_and_fix(tmp_path: Path) -> None:
    done = _check(tmp_path, "backoff_base_s = 2\nbackoff_cap_s = 30\n", tail=RTU)
    assert done.returncode == 0, done.stderr
    assert "ok: version 1, 2 devices" in done.stdout, done.stdout
    lines = _deprecated(done.stdout + done.stderr)
    assert len(lines) == 3, done.stdout + done.stderr
    for place, line in zip(
        ("devices[0].backoff_base_s", "devices[0].backoff_cap_s", "devices[1].backoff_cap_s"),
        lines,
        strict=True,
    ):
        assert f"place={place} " in line, line
        assert "has no effect" in line and "remove it" in line, line


def test_no_warning_when_they_are_absent(tmp_path: Path) -> None:
    done = _check(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert _deprecated(done.stdout + done.stderr) == [], done.stdout + done.stderr


def test_their_old_range_still_holds(tmp_path: Path) -> None:
    done = _check(tmp_path, "backoff_base_s = 0\n")
    assert done.returncode == 2
    assert "devices[0].backoff_base_s" in done.stderr, done.stderr
