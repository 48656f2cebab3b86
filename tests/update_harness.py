"""Self-update with real processes: release wheels built from copies of this tree, a releases
directory with real venvs, a supervisor loop standing in for systemd, an HTTP server for the
files and a paho client that plays the operator (commands, chunks, state). Used by
tests/test_update*.py and bench/bench_update.py."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from paho.mqtt.enums import CallbackAPIVersion

from gatewayd.lifecycle.releases import Releases
from gatewayd.lifecycle.verify import make_manifest, sign
from gatewayd_sim.procs import wait_for

REPO = Path(__file__).parent.parent
DEPS = ["paho-mqtt>=2.1,<3", "pyserial>=3.5", "apscheduler>=3.10,<4", "pyjwt[crypto]>=2.8"]
DEVICE = "gw-test"
COMMANDS = f"/devices/{DEVICE}/commands"
STATE = f"/devices/{DEVICE}/state"
RESULTS = f"/devices/{DEVICE}/events/command-results"

# Variants of the tree: (file, text to find, replacement). A variant that no longer applies fails
# loudly (the text must be found), so a refactoring cannot silently make a test vacuous.
_UPLINK_START = "        self._start_uplink()\n        self._supervise("
_RUN = "def _run(args: argparse.Namespace) -> int:\n"
BROKEN: dict[str, list[tuple[str, str, str]]] = {
    # Starts, polls, but never connects: the uplink is not started at all.
    "no_uplink": [("gatewayd/daemon.py", _UPLINK_START, "        self._supervise(")],
    # Dies at every start of the daemon, before it could report anything.
    "dies": [("gatewayd/cli.py", _RUN, _RUN + "    raise SystemExit(1)\n")],
}


def _pip(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet", "--disable-pip-version-check"],
        check=True,
        cwd=cwd,
        timeout=300,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class Wheels:
    """The project's wheel at any version (and variant), plus its dependencies' wheels."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deps = root / "deps"
        if not self.deps.exists():
            _pip("wheel", "-w", str(self.deps), *DEPS)

    def project(self, version: str, variant: str | None = None) -> Path:
        out = self.root / f"gatewayd-{version}"
        found = list(out.glob("gatewayd-*.whl")) if out.exists() else []
        if found:
            return found[0]
        src = self.root / f"src-{version}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(
            REPO,
            src,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "*.egg-info", "build", "__pycache__", ".mypy_cache", "tests"
            ),
        )
        edits = [
            ("pyproject.toml", 'version = "0.1.0"', f'version = "{version}"'),
            ("gatewayd/__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"'),
            *BROKEN.get(variant or "", []),
        ]
        for rel, old, new in edits:
            p = src / rel
            text = p.read_text()
            assert old in text, f"{rel}: {old!r} not found; update tests/update_harness.py"
            p.write_text(text.replace(old, new, 1))
        _pip("wheel", "--no-deps", "-w", str(out), f"./{src.name}", cwd=self.root)
        shutil.rmtree(src)
        return next(out.glob("gatewayd-*.whl"))

    def files(self, version: str, variant: str | None = None) -> list[Path]:
        return [self.project(version, variant), *sorted(self.deps.glob("*.whl"))]


class ReleaseKey:
    """The operator's release key: the public half in folder/release.pub (for [update]
    release_key), the private half in folder/release.key."""

    def __init__(self, folder: Path, private: ed25519.Ed25519PrivateKey | None = None) -> None:
        self.private = private or ed25519.Ed25519PrivateKey.generate()
        self.public_path = folder / "release.pub"
        if private is None:
            self.public_path.write_bytes(
                self.private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            (folder / "release.key").write_bytes(self.pem())

    @classmethod
    def load(cls, folder: Path) -> ReleaseKey:
        key = serialization.load_pem_private_key((folder / "release.key").read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return cls(folder, key)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def update_command(
    cid: str, version: str, files: list[Path], key: ReleaseKey, **source: Any
) -> dict[str, Any]:
    manifest = make_manifest(version, files)
    return {
        "id": cid,
        "command": "update",
        "version": version,
        "manifest": manifest,
        "signature": sign(key.pem(), manifest),
        **source,
    }


def install_first_release(releases: Path, version: str, files: list[Path]) -> None:
    """What install.sh does: a venv at releases/<version>, `current` pointing at it."""
    r = Releases(releases)
    if r.complete(version) is None:
        target = releases / version
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, timeout=120)
        wheels = sorted({str(f.parent) for f in files})
        links = [a for w in wheels for a in ("--find-links", w)]
        subprocess.run(
            [str(target / "bin" / "python"), "-m", "pip", "install", "--isolated", "--quiet",
             "--no-index", *links, f"gatewayd=={version}"],
            check=True, timeout=300,
        )  # fmt: skip
        (target / ".complete").write_text("install\n")
    reset_releases(releases, version)


def reset_releases(releases: Path, version: str) -> None:
    """Back to a fresh install of `version`: every other release and `previous` gone."""
    r = Releases(releases)
    r.set_link("current", version)
    (releases / "previous").unlink(missing_ok=True)
    for p in releases.iterdir():
        if p.is_dir() and not p.is_symlink() and p.name != version:
            shutil.rmtree(p)


class Supervisor:
    """systemd's part: ExecStartPre (the start check, from `previous`), then ExecStart (from
    `current`), started again whenever it exits (Restart=always, RestartSec short)."""

    def __init__(
        self, releases: Path, config: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.releases = releases
        self.config = config
        self.log = log
        self.env = {**os.environ, **(env or {})}
        for k in ("PYTHONPATH", "VIRTUAL_ENV"):
            self.env.pop(k, None)  # the release's own venv only
        self.starts = 0
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self.log.open("ab") as out:
            while not self._stop.is_set():
                pre = self.releases / "previous" / "bin" / "python"
                if pre.exists():
                    subprocess.run(
                        [str(pre), "-I", "-m", "gatewayd.lifecycle", "--config", str(self.config)],
                        stdout=out, stderr=subprocess.STDOUT, env=self.env, timeout=60, cwd="/",
                    )  # fmt: skip
                exe = self.releases / "current" / "bin" / "gatewayd"
                self.proc = subprocess.Popen(
                    [str(exe), "run", "--config", str(self.config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd="/",  # as under systemd (WorkingDirectory= unset)
                )
                self.starts += 1
                self.exits.append(self.proc.wait())
                self._stop.wait(0.3)  # RestartSec

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._thread.join(15)


class Operator:
    """The cloud side on the broker: sends commands and chunks, collects state and results."""

    def __init__(self, port: int) -> None:
        self.states: list[tuple[float, dict[str, Any]]] = []
        self.results: list[dict[str, Any]] = []
        self.sent_bytes = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"operator-{id(self)}")
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe([(STATE, 1), (RESULTS, 1)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "operator: no SUBACK"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        with self.lock:
            if msg.topic == STATE:
                self.states.append((time.monotonic(), doc))
            else:
                self.results.append(doc)

    def send(self, command: dict[str, Any]) -> None:
        payload = json.dumps(command).encode()
        self.sent_bytes += len(payload)
        self.client.publish(COMMANDS, payload, qos=1).wait_for_publish(10)

    def send_chunks(self, version: str, files: list[Path], chunk: int = 48 * 1024) -> None:
        """The files in manifest order (sorted by name, as make_manifest lists them)."""
        infos = []
        for i, f in enumerate(sorted(files, key=lambda p: p.name)):
            data = f.read_bytes()
            for off in range(0, len(data), chunk):
                part = data[off : off + chunk]
                self.sent_bytes += len(part)
                infos.append(
                    self.client.publish(f"{COMMANDS}/update/{version}/{i}/{off}", part, qos=1)
                )
        for info in infos:
            info.wait_for_publish(30)

    def result(self, cid: str, timeout: float = 120) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            with self.lock:
                return next((r for r in self.results if r.get("id") == cid), None)

        return dict(wait_for(find, timeout, f"the result of command {cid}", interval=0.1))

    def software(
        self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str, since: float = 0
    ) -> dict[str, Any]:
        """The `software` part of the first state published after `since` that satisfies cond."""

        def find() -> dict[str, Any] | None:
            with self.lock:
                for t, doc in self.states:
                    sw = doc.get("software") or {}
                    if t >= since and cond(sw):
                        return dict(sw)
            return None

        return dict(wait_for(find, timeout, what, interval=0.1))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class FileServer:
    """The operator's HTTP server (http.server), serving one folder; counts the bytes sent."""

    def __init__(self, folder: Path) -> None:
        self.sent = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def copyfile(self, source: Any, outputfile: Any) -> None:
                data = source.read()
                server.sent += len(data)
                outputfile.write(data)

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def publish_folder(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, folder / f.name)
    return folder


def site_config(
    state: Path,
    broker_port: int,
    device_port: int,
    key: Path,
    releases: Path,
    device: str = DEVICE,
    uplink_extra: str = "",
    **update: Any,
) -> str:
    """One gateway's file; `device` and `uplink_extra` (e.g. retain_state) for a fleet of them."""
    points = (REPO / "tests" / "fixtures" / "plc_points.toml").read_text()
    settings = {"health_deadline_s": 20, "max_starts": 2, **update}
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    return f"""
version = 1
[gateway]
id = "{device}"
state_dir = "{state}"
[metrics]
listen = ""
[update]
release_key = "{key}"
releases_dir = "{releases}"
{extra}
[uplink]
host = "127.0.0.1"
port = {broker_port}
project = "p"
region = "r"
registry = "g"
device = "{device}"
backoff_base_s = 0.2
backoff_cap_s = 1.0
{uplink_extra}[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
[[devices]]
id = "plc"
driver = "modbus_tcp"
port = {device_port}
interval_ms = 200
{points}
"""


@contextlib.contextmanager
def running(sup: Supervisor) -> Iterator[Supervisor]:
    try:
        yield sup
    finally:
        sup.stop()
