"""Shared fixtures: real brokers, real simulators, real gateway processes.

A test that needs a system binary (mosquitto, socat) skips on a developer machine without it and
FAILS under CI=true, where a missing binary means the CI set-up is broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mosquitto, free_port

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path:
        return path
    msg = f"{name} is not installed (Debian: apt-get install {name})"
    if IN_CI:
        pytest.fail(f"{msg}; CI must install it", pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def mosquitto_bin() -> str:
    return require_binary("mosquitto")


@pytest.fixture
def mosquitto(mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    m = Mosquitto(tmp_path / "mosquitto", free_port(), binary=mosquitto_bin)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all killed at the end whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(5)
