"""Vendor device SDKs in venvs of their own, as independent clients of the cloud stand-ins.

The SDKs pin versions that conflict with ours (tb-mqtt-client brings its own paho), so each gets
a venv under the repository's .venv-sdk/<name>/ (git-ignored), made once and reused while its
probe import works. A flow runs there as a subprocess that prints JSON lines (tests/sdk_flows/).
An SDK that cannot be installed skips the test locally and FAILS it under CI=true.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
FLOWS = Path(__file__).resolve().parent / "sdk_flows"
INSTALL_TIMEOUT_S = 900
MARK = "SDKFLOW "  # the flows' own lines; anything else on stdout is the SDK's


def sdk_python(name: str, requirements: list[str], probe: str) -> Path:
    """The python of a venv with `requirements` installed; `probe` is a module to import."""
    venv = ROOT / ".venv-sdk" / name
    py = venv / "bin" / "python"
    if py.exists() and _imports(py, probe):
        return py
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(py), "-m", "pip", "install", "-q", *requirements],
    ]
    for cmd in steps:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _unavailable(name, f"{' '.join(cmd[:4])} took over {INSTALL_TIMEOUT_S} s")
        if done.returncode != 0:
            _unavailable(name, f"{' '.join(cmd[:4])} failed: {done.stderr.strip()[-500:]}")
    if not _imports(py, probe):
        _unavailable(name, f"{' '.join(requirements)} installed but `import {probe}` fails")
    return py


def _imports(py: Path, module: str) -> bool:
    return subprocess.run([str(py), "-c", f"import {module}"], capture_output=True).returncode == 0


def _unavailable(name: str, why: str) -> None:
    msg = f"vendor SDK {name} unavailable: {why}"
    if IN_CI:
        pytest.fail(f"{msg}; CI must be able to install it from the registry", pytrace=False)
    pytest.skip(msg)


class Flow:
    """A running SDK flow script: read its JSON lines, answer its `ready` steps."""

    def __init__(self, py: Path, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(py), str(FLOWS / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def next(self) -> dict[str, Any]:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        noise: list[str] = []  # what the SDK itself printed
        while True:
            line = out.readline()
            if not line:
                self.proc.wait(30)
                err = self.proc.stderr.read() if self.proc.stderr else ""
                said = "".join(noise[-20:])
                raise AssertionError(
                    f"SDK flow ended early (rc={self.proc.returncode}):\n{said}\n{err[-4000:]}"
                )
            if line.startswith(MARK):
                doc: dict[str, Any] = json.loads(line[len(MARK) :])
                return doc
            noise.append(line)

    def expect_ready(self, step: str) -> None:
        doc = self.next()
        assert doc == {"ready": step}, doc

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def results(self) -> dict[str, Any]:
        doc = self.next()
        assert "results" in doc, doc
        self.proc.wait(30)
        res: dict[str, Any] = doc["results"]
        return res

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
