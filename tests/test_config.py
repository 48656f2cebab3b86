"""Configuration errors are data: each case is a file and the exact message it must produce."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, example_path, load, load_file

CASES = sorted((Path(__file__).parent / "config_cases").iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_config_case_gives_exact_error(case: Path) -> None:
    text = (case / "gateway.toml").read_text()
    with pytest.raises(ConfigError) as err:
        load(text, source="gateway.toml")
    assert str(err.value) == (case / "expected.err").read_text().strip()


def test_example_config_loads() -> None:
    cfg = load_file(example_path())
    assert cfg.version == 1
    assert [p.id for p in cfg.devices[0].points][:2] == ["flow_temp", "return_temp"]
    assert cfg.uplink.tls.enabled and cfg.uplink.tls.verify, "TLS is verified by default"
    assert cfg.uplink.auth.kind == "jwt"


def test_check_command_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(example_path())],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ok: version 1"), ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[uplink]\nport = 0\n")
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "uplink.port: 0 is below 1" in res.stderr


def test_bool_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"uplink.port: expected an integer, got a boolean"):
        load("[uplink]\nport = true\n")
