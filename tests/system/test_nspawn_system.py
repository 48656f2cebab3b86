"""gatewayd under a real systemd: runs nspawn_systest.sh (a booted Debian 12 container) and shows
its checks and figures. Needs root, debootstrap and systemd-container; under CI=true their
absence fails. The script's own checks are the assertions: any `FAIL:` line fails this test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import IN_CI, require_binary

SCRIPT = Path(__file__).parent / "nspawn_systest.sh"


@pytest.mark.slow
def test_install_start_reload_hotplug_watchdog_stop_purge_under_systemd() -> None:
    if os.geteuid() != 0:
        msg = "the systemd-nspawn system test needs root"
        if IN_CI:
            pytest.fail(f"{msg}; CI runs as root", pytrace=False)
        pytest.skip(msg)
    for binary in ("debootstrap", "systemd-nspawn", "nsenter"):
        require_binary(binary)
    # Cold (debootstrap): about 2 minutes; cached root: under a minute.
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    print(r.stdout)
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAIL:")]
    assert r.returncode == 0 and not failed, "\n".join(failed) + "\n" + r.stderr[-3000:]
