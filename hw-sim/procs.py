"""Processes and ports on loopback, for the tests, the benchmarks and the demo's neighbours:
free ports, waiting for a condition or a listening port, and a mosquitto broker run from a
generated configuration file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MOSQUITTO_BASE = (
    "persistence false",
    # Unbounded in-flight and large queues: the broker must never be what limits a measurement.
    "max_inflight_messages 0",
    "max_queued_messages 1000000",
    "message_size_limit 0",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something true; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 10.0) -> float:
    """Wait until something listens on 127.0.0.1:`port`; returns that monotonic time."""
    wait_for(lambda: port_open(port), timeout, f"port {port}", interval=0.01)
    return time.monotonic()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class Mosquitto:
    """A mosquitto on 127.0.0.1 that can be started again on the same port after a kill."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        binary: str | None = None,
        extra: Sequence[str] = (),
        anonymous: bool = True,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.binary = binary or mosquitto_binary()
        if self.binary is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.extra = [f"allow_anonymous {'true' if anonymous else 'false'}", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait until it listens; returns that monotonic time."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", *MOSQUITTO_BASE, *self.extra]
        if os.geteuid() == 0:
            lines.append("user root")  # key files made by the test stay readable
        conf.write_text("\n".join(lines) + "\n")
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115
        assert self.binary is not None
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log)
        return wait_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
