"""The metrics endpoint under a connection flood, against a real daemon process (issue 14)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from daemon_procs import try_scrape
from helpers import free_port, wait_for

from gatewayd.metrics_http import MAX_CONNECTIONS

FD_LIMIT = 256  # the daemon's descriptor limit in this test: a flood of 400 would exhaust it


def _config(tmp: Path, metrics_port: int) -> Path:
    path = tmp / "gw.toml"
    path.write_text(
        f"""
version = 1
[gateway]
state_dir = "{tmp}"
[metrics]
listen = "127.0.0.1:{metrics_port}"
[uplink]
host = "127.0.0.1"
port = {free_port()}
project = "p1"
region = "r1"
registry = "reg1"
device = "gw-test"
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
"""
    )
    return path


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def test_a_connection_flood_is_counted_not_logged_and_costs_no_descriptors(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gw.log"
    with open(log, "ab") as out:
        gw = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "--config", str(_config(tmp_path, port))],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_fds,
        )
    procs.append(gw)
    wait_for(lambda: try_scrape(port), 30, "the metrics endpoint")
    time.sleep(0.5)
    baseline = _fds(gw.pid)
    lines_before = len(log.read_text().splitlines())
    flood: list[socket.socket] = []
    peak = baseline
    try:
        for _ in range(400):  # idle connections: they never send a request
            with contextlib.suppress(OSError):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            peak = max(peak, _fds(gw.pid))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, _fds(gw.pid))
            time.sleep(0.02)
    finally:
        for s in flood:
            s.close()
    assert gw.poll() is None, log.read_text()[-3000:]
    # The slots, and slack for what the daemon opens on its own (a reconnect attempt, the buffer).
    assert peak <= baseline + MAX_CONNECTIONS + 8, (baseline, peak)
    samples = wait_for(lambda: try_scrape(port), 30, "the endpoint after the flood")
    refused = samples.get("gatewayd_metrics_http_refused_total", reason="connection_limit")
    assert refused >= 300, refused
    new_lines = log.read_text().splitlines()[lines_before:]
    noisy = [ln for ln in new_lines if "metrics" in ln or "level=error" in ln]
    assert len(noisy) <= 3, noisy


def test_a_silent_connection_is_closed_by_the_read_timeout(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port = free_port()
    with open(tmp_path / "gw.log", "ab") as out:
        gw = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "run", "--config", str(_config(tmp_path, port))],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    procs.append(gw)
    wait_for(lambda: try_scrape(port), 30, "the metrics endpoint")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /metr")  # a head that never ends
        assert s.recv(100) == b"", "closed by the daemon, without an answer"
    samples = wait_for(lambda: try_scrape(port), 30, "the endpoint")
    assert samples.get("gatewayd_metrics_http_refused_total", reason="read_timeout") == 1
