"""The local file and pushed documents (issue 15): a real daemon, a real push, a real restart.

The applied pushed document wins over a local file whose version is not above it; each time the
local file is not taken, the log says so at WARNING with what to do, and `gatewayd check` notes
it. A SIGHUP that changes nothing says so at WARNING too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import start_gateway, wait_for
from test_remote_config import Cloud, _setup, _wait_flowing


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    try:
        yield c
    finally:
        c.bt.stop()


def _warnings(log: Path, event: str) -> list[str]:
    return [
        ln
        for ln in log.read_text().splitlines()
        if "level=warning" in ln and f"event={event} " in ln
    ]


def _wait_warning(log: Path, event: str, n: int = 1) -> list[str]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (lambda w: w if len(w) >= n else None)(_warnings(log, event)),
        30,
        f"{n} WARNING {event} in {log}",
    )


NOT_TAKEN = (
    "local file version 1 is below the applied pushed version 2: "
    "raise `version` above 2 to take the local file, or push"
)


def test_a_local_edit_below_the_pushed_version_is_warned_at_restart_and_by_check(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    doc, cfg, _ = _setup(cloud, procs, tmp_path)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, procs, log)
    _wait_flowing(cloud, "plc", n=5)
    pushed = json.loads(json.dumps(doc))
    pushed["version"] = 2
    pushed["devices"][0]["interval_ms"] = 200
    cloud.push(pushed)
    cloud.outcome(2, "applied")
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(10) == 0
    assert _warnings(log, "local_file_not_taken") == []
    # The field engineer edits the local file (still version 1) and restarts.
    cfg.write_text(cfg.read_text().replace("interval_ms = 100", "interval_ms = 300"))
    gw = start_gateway(cfg, procs, log)
    (line,) = _wait_warning(log, "local_file_not_taken")
    assert "local_version=1 version=2" in line and json.dumps(NOT_TAKEN) in line, line
    res = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(
        f"note: {tmp_path / 'config' / 'applied.json'} overrides this file at start: {NOT_TAKEN}"
    ), res.stdout
    # And a reload of that file is refused, at WARNING, with the same advice.
    gw.send_signal(signal.SIGHUP)
    cloud.outcome(1, "rejected")
    (line,) = _wait_warning(log, "local_file_not_taken", 2)[1:]
    assert "raise `version` above 2 to take the local file, or push" in line, line


def test_a_reload_that_changes_nothing_says_so_at_warning(
    cloud: Cloud, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    _, cfg, _ = _setup(cloud, procs, tmp_path)
    log = tmp_path / "gw.log"
    gw = start_gateway(cfg, procs, log)
    _wait_flowing(cloud, "plc", n=5)
    gw.send_signal(signal.SIGHUP)
    (line,) = _wait_warning(log, "reload_unchanged")
    assert "version=1" in line and "nothing changed" in line, line
    assert gw.poll() is None
