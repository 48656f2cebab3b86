"""Processes and measurements shared by the benchmarks: simulators, mosquitto, a gateway process,
a subscriber that measures latency by record id, and /proc sampling of CPU time and RSS.

Every benchmark runs real processes on loopback, like the tests, and prints figures beside a
baseline measured in the same run.
"""

from __future__ import annotations

import compileall
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd_sim.cloud.compact import decode
from gatewayd_sim.procs import Mosquitto, free_port, wait_for, wait_port

__all__ = ["Mosquitto", "free_port", "wait_for", "wait_port"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (/proc/<pid>/io write_bytes)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def cpu_ns_seconds(pid: int) -> float:
    """CPU time of a process's live threads at nanosecond resolution (/proc/<pid>/task/*/
    schedstat); /proc/<pid>/stat counts in 10 ms ticks, too coarse for a few seconds at 3 %."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE / 1e6


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def register_map(points: int, unit: int = 1) -> str:
    """A map of `points` holding registers whose values change at every tick."""
    regs = ",\n".join(
        f'  {{ table = "holding", address = {a}, type = "uint16", signal = "counter", '
        f"step = {a % 7 + 1}, period_s = 0.05 }}"
        for a in range(points)
    )
    return f"[[units]]\nid = {unit}\nregisters = [\n{regs}\n]\n"


def point_tables(points: int) -> str:
    return "".join(
        f'[[devices.points]]\nid = "r{a}"\ntable = "holding"\naddress = {a}\ntype = "uint16"\n'
        for a in range(points)
    )


@dataclass
class Rig:
    """Simulated devices, a broker, a subscriber and a gateway process in one temp folder."""

    work: Path
    state_dir: Path | None = None  # default: work
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    device_ports: list[int] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None

    def start_devices(self, n: int, points: int) -> None:
        for i in range(n):
            self.device_ports.append(self.start_simulator(f"map{i}", register_map(points)))
        for port in self.device_ports:
            wait_port(port)

    def start_simulator(self, name: str, register_map_toml: str) -> int:
        """A Modbus TCP simulator process serving the map; its port (not yet waited for)."""
        mapfile = self.work / f"{name}.toml"
        mapfile.write_text(register_map_toml)
        port = free_port()
        args = ["-m", "gatewayd_sim", "modbus", "--map", str(mapfile), "--port", str(port)]
        self.procs.append(subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL))
        return port

    def config(
        self,
        broker_port: int,
        points: int,
        interval_ms: int,
        extra: str = "",
        auth: str = 'kind = "none"',
        tail: str = "",
    ) -> Path:
        devices = "".join(
            f'[[devices]]\nid = "dev{i}"\ndriver = "modbus_tcp"\nport = {port}\n'
            f"interval_ms = {interval_ms}\n{point_tables(points)}"
            for i, port in enumerate(self.device_ports)
        )
        text = f"""version = 1
[gateway]
id = "bench"
state_dir = "{self.state_dir or self.work}"
[uplink]
host = "127.0.0.1"
port = {broker_port}
device = "bench"
project = "p"
region = "r"
registry = "g"
{extra}
[uplink.tls]
enabled = false
[uplink.auth]
{auth}
{devices}
{tail}"""
        path = self.work / "gateway.toml"
        path.write_text(text)
        return path

    def start_gateway(
        self, config: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`gatewayd run`; `cwd` set to a folder holding another `gatewayd` package runs that
        code instead (bench/ab.py: a baseline commit beside the worktree, in the same run)."""
        log = open(self.work / "gateway.log", "ab")  # noqa: SIM115
        self.gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gatewayd",
                "--log-level",
                "WARNING",
                "run",
                "--config",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.procs.append(self.gateway)
        return self.gateway

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


@contextmanager
def rig() -> Iterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
        r = Rig(Path(tmp))
        try:
            yield r
        finally:
            r.close()


def delivered_range(db: Path) -> set[int]:
    """Every id a buffer file ever handed out (its incarnation's first id to the last)."""
    import sqlite3

    with sqlite3.connect(db) as c:
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    base = int((db.parent / (db.name + ".incarnation")).read_text()) << 40
    return set(range(base + 1, (row[0] if row else base) + 1))


class LatencySubscriber:
    """Counts received records by id and the latency from each reading's stamp to receipt."""

    def __init__(self, port: int, topic: str = "/devices/bench/events/#") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.counts: dict[int, int] = {}
        self.alarms = 0  # alarm-lane records received (first copies)
        self.latencies_ms: list[float] = []
        self.timeline: list[tuple[float, float]] = []  # (monotonic, latency ms) samples
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()  # cleared on disconnect, set again on SUBACK
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("subscriber got no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now_ms = time.time() * 1000
        mono = time.monotonic()
        try:
            records = decode(msg.payload)  # JSON arrays and the compact encoding alike
        except ValueError:
            return
        with self.lock:
            for r in records:
                rid = r["id"]
                first = rid not in self.counts
                self.counts[rid] = self.counts.get(rid, 0) + 1
                if first:
                    lat = now_ms - r["ts"]
                    self.latencies_ms.append(lat)
                    if r.get("lane") == "alarm":
                        self.alarms += 1
            if records:
                self.timeline.append((mono, now_ms - records[-1]["ts"]))

    @property
    def unique(self) -> int:
        with self.lock:
            return len(self.counts)

    @property
    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.counts.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- bytecode as an install has it --------------------------------------------------------------


def source_dirs() -> list[Path]:
    """The folders of gatewayd's own packages as this interpreter imports them (an editable
    install maps several top-level folders of the checkout under the gatewayd namespace)."""
    import gatewayd
    import gatewayd.buffer
    import gatewayd.config
    import gatewayd.drivers
    import gatewayd_sim

    pkgs = (gatewayd, gatewayd.buffer, gatewayd.config, gatewayd.drivers, gatewayd_sim)
    return sorted({Path(d) for pkg in pkgs for d in pkg.__path__})


def pycache_dirs(dirs: list[Path]) -> set[Path]:
    return {p for d in dirs for p in d.rglob("__pycache__")}


def compile_sources(dirs: list[Path]) -> None:
    """Write the .pyc of gatewayd's own modules beside their sources, as pip does when it
    installs: an editable checkout under PYTHONDONTWRITEBYTECODE=1 has none and compiles every
    module it imports at every start (~0.3 s, and ~5 MB of RSS the compiler leaves behind, that
    an installed gateway does not pay). main() removes the folders made here at the end."""
    for d in dirs:
        compileall.compile_dir(d, quiet=1)


@contextmanager
def compiled_sources() -> Iterator[None]:
    """gatewayd's modules compiled beside their sources for the processes started inside (which
    read .pyc even under PYTHONDONTWRITEBYTECODE=1), the folders made here removed after: the
    figures are an installed gateway's, and the checkout is left as it was."""
    dirs = source_dirs()
    before = pycache_dirs(dirs)
    try:
        compile_sources(dirs)
        yield
    finally:
        for d in pycache_dirs(dirs) - before:
            shutil.rmtree(d, ignore_errors=True)
