"""Helpers for the daemon tests: a gateway process with its metrics and sd_notify socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from gatewayd.status import Samples, fetch, parse

FIXTURES = Path(__file__).parent / "fixtures"
TEST_DRIVERS = FIXTURES / "test_drivers"


def with_metrics(toml: str, port: int) -> str:
    """Add a [metrics] table to a config made by helpers.gateway_toml."""
    return toml.replace("[uplink]\n", f'[metrics]\nlisten = "127.0.0.1:{port}"\n[uplink]\n', 1)


def plugin_device(dev_id: str, driver: str, interval_ms: int = 100, points: int = 2) -> str:
    pts = "".join(
        f'[[devices.points]]\nid = "p{i}"\ntable = "holding"\naddress = {i}\n'
        for i in range(points)
    )
    return (
        f'\n[[devices]]\nid = "{dev_id}"\ndriver = "{driver}"\ninterval_ms = {interval_ms}\n{pts}'
    )


def start(
    config: Path,
    procs: list[subprocess.Popen[bytes]],
    log: Path,
    env: dict[str, str] | None = None,
    plugins: bool = False,
    log_level: str | None = "INFO",  # None: the configuration's [logging] level
) -> subprocess.Popen[bytes]:
    full = {**os.environ, **(env or {})}
    if plugins:
        full["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(TEST_DRIVERS), full.get("PYTHONPATH")])
        )
    out = open(log, "ab")  # noqa: SIM115
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatewayd",
            *(["--log-level", log_level] if log_level else []),
            "run",
            "--config",
            str(config),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=full,
    )
    procs.append(p)
    return p


def scrape(port: int) -> Samples:
    return parse(fetch("127.0.0.1", port))


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


class NotifySocket:
    """The datagram socket systemd would own: collects what the daemon sends to $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def states(self) -> list[str]:
        """Every `KEY=value` sent, in order."""
        return [line for _, m in list(self.messages) for line in m.splitlines()]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()
