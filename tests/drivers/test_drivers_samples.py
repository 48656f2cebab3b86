"""Each driver's commented sample.toml is valid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.config import load

ROOT = Path(__file__).resolve().parent.parent.parent / "drivers"


@pytest.mark.parametrize("folder", ["modbus", "serial_line"])
def test_driver_sample_config_loads(folder: str) -> None:
    text = (ROOT / folder / "sample.toml").read_text()
    cfg = load('[uplink.auth]\nkind = "none"\n' + text)
    assert cfg.devices and all(d.points for d in cfg.devices)
    assert {d.driver for d in cfg.devices} <= {
        "modbus_tcp",
        "modbus_rtu",
        "modbus_rtu_over_tcp",
        "serial_line",
    }
