"""`gatewayd demo --cloud X`: the boiler's readings reach each cloud's stand-in, none twice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gatewayd.demo import STAND_INS


@pytest.mark.parametrize("cloud", ["cloud-iot-core", "clearblade", "azure", "aws", "thingsboard"])
def test_demo_runs_against_the_clouds_stand_in(cloud: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "demo", "--cloud", cloud, "--duration", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{STAND_INS.get(cloud, 'cloud broker')} on 127.0.0.1:" in out.stdout, out.stdout
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary:") and "0 duplicates" in summary, summary
    assert "cloud received 0 unique" not in summary, summary
