"""Start-up time, memory and idle CPU of a real `gatewayd run` process.

    .venv/bin/python bench/bench_startup.py [--quick] [--only ready|rss|rss_p1000|cpu]...

1. READY: time from spawning `gatewayd run` to the READY=1 datagram on $NOTIFY_SOCKET (a socket
   this script owns, as systemd would), against `python -c pass` measured in the same run.
   Goal (issue 20): READY within 0.5 s. Measured twice: with bytecode cached, as on an install
   (pip writes every module's .pyc when it installs; the unit's PYTHONDONTWRITEBYTECODE=1 only
   stops the daemon writing more), and without, as an editable checkout under
   PYTHONDONTWRITEBYTECODE=1 starts (gatewayd's own modules compiled from source every time).
2. RSS: a gateway polling 100 points every 100 ms (p100), or 10 devices x 100 points every 1 s
   (p1000), from a simulated Modbus device and publishing to a broker (mosquitto if installed,
   else the hw-sim cloud stand-in), sampled from /proc (10 minutes; --quick: 30 s), against an
   idle interpreter. Goal (issue 20): at most 35 MB at p1000 after 10 minutes.
3. Idle CPU and RSS: 10 devices polled every 10 s (--quick: 20 s window, full: 120 s), against
   an idle asyncio interpreter over the same window.

Every gateway but the no-bytecode READY runs with bytecode cached in a temporary
PYTHONPYCACHEPREFIX (the first start writes it), so the checkout is left as it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import compile_sources, cpu_seconds, pycache_dirs, source_dirs

from gatewayd_sim.procs import free_port, mosquitto_binary, wait_port

PY = sys.executable
READY_GOAL_S = 0.5
RSS_GOAL_MB = 35.0


def gateway_env() -> dict[str, str]:
    """As the unit starts it: PYTHONDONTWRITEBYTECODE=1 (the .pyc come from the install)."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def config(
    work: Path, broker_port: int, devices: list[tuple[str, int, int, int]], metrics: int = 0
) -> Path:
    """devices: (id, Modbus port, interval ms, points); points are consecutive registers."""
    text = f"""
version = 1
[gateway]
id = "bench"
state_dir = "{work}"
[metrics]
listen = "{f"127.0.0.1:{metrics}" if metrics else ""}"
[uplink]
host = "127.0.0.1"
port = {broker_port}
project = "bench-project"
region = "local"
registry = "gateways"
device = "bench"
backoff_base_s = 0.5
backoff_cap_s = 2.0
[uplink.tls]
enabled = false
[uplink.auth]
kind = "none"
"""
    for dev_id, port, interval_ms, n in devices:
        text += (
            f'[[devices]]\nid = "{dev_id}"\ndriver = "modbus_tcp"\nport = {port}\n'
            f"interval_ms = {interval_ms}\n"
        )
        for i in range(n):
            text += f'[[devices.points]]\nid = "r{i}"\ntable = "holding"\naddress = {i}\n'
    path = work / "gw.toml"
    path.write_text(text)
    return path


def device_map(work: Path, n: int) -> Path:
    regs = ",\n".join(
        f'  {{ table = "holding", address = {i}, type = "uint16", signal = "counter", '
        f"step = 1, period_s = 0.1 }}"
        for i in range(n)
    )
    path = work / "map.toml"
    path.write_text(f"[[units]]\nid = 1\nregisters = [\n{regs}\n]\n")
    return path


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(args, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def start_broker(procs: Procs, work: Path) -> tuple[int, str]:
    port = free_port()
    mosq = mosquitto_binary()
    if mosq:
        conf = work / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 0\nmax_queued_messages 100000\n"
        )
        procs.spawn([mosq, "-c", str(conf)])
        what = "mosquitto"
    else:
        procs.spawn([PY, "-m", "gatewayd_sim", "cloud", "--port", str(port)])
        what = "hw-sim cloud stand-in"
    wait_port(port)
    return port, what


def start_device(procs: Procs, work: Path, points: int) -> int:
    port = free_port()
    procs.spawn(
        [
            PY,
            "-m",
            "gatewayd_sim",
            "modbus",
            "--map",
            str(device_map(work, points)),
            "--port",
            str(port),
        ]
    )
    wait_port(port)
    return port


def time_to_ready(cfg: Path, work: Path, procs: Procs) -> float:
    sock_path = work / f"notify-{time.monotonic_ns()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(sock_path))
        s.settimeout(30)
        t0 = time.perf_counter()
        p = procs.spawn(
            [PY, "-m", "gatewayd", "run", "--config", str(cfg)],
            env={**gateway_env(), "NOTIFY_SOCKET": str(sock_path)},
        )
        while True:
            msg = s.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                dt = time.perf_counter() - t0
                break
    p.terminate()
    p.wait(10)
    sock_path.unlink()
    return dt


def time_python_pass() -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def bench_ready(work: Path, procs: Procs, runs: int) -> None:
    broker_port, _ = start_broker(procs, work)
    device_port = start_device(procs, work, 10)
    cfg = config(work, broker_port, [("plc", device_port, 1000, 10)], metrics=free_port())
    dirs = source_dirs()
    base = statistics.median(time_python_pass() for _ in range(runs))
    for bytecode in (False, True):
        if bytecode:
            compile_sources(dirs)
        elif any(any(d.glob("*.pyc")) for d in pycache_dirs(dirs)):
            print("READY without bytecode: not measured, the checkout has __pycache__ folders")
            continue
        time_to_ready(cfg, work, procs)  # warm the page cache, as a second boot would
        times = [time_to_ready(cfg, work, procs) for _ in range(runs)]
        ready = statistics.median(times)
        print(
            f"READY {'with bytecode (as installed)' if bytecode else 'without bytecode'}: "
            f"{ready * 1e3:.0f} ms from spawn to READY=1 (median of {runs}; "
            f"{min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}) vs {base * 1e3:.0f} ms for "
            f"`python -c pass`, {ready / base:.1f}x; goal <= {READY_GOAL_S * 1e3:.0f} ms: "
            f"{'met' if ready <= READY_GOAL_S else 'NOT met'}"
        )


def bench_rss(work: Path, procs: Procs, duration_s: float, shape: str = "p100") -> None:
    """p100: 100 points every 100 ms; p1000: 10 devices x 100 points every 1 s (issue 20's
    "RSS at p1000" goal, 35 MB)."""
    broker_port, broker = start_broker(procs, work)
    device_port = start_device(procs, work, 100)
    metrics_port = free_port()
    devices = (
        [("plc", device_port, 100, 100)]
        if shape == "p100"
        else [(f"dev{i}", device_port, 1000, 100) for i in range(10)]
    )
    cfg = config(work, broker_port, devices, metrics=metrics_port)
    idle = procs.spawn([PY, "-c", "import time; time.sleep(3600)"])
    gw = procs.spawn(
        [PY, "-m", "gatewayd", "run", "--config", str(cfg)],
        stdout=open(work / "rss-gw.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=gateway_env(),
    )
    samples: list[int] = []
    t0 = time.monotonic()
    time.sleep(2)
    while time.monotonic() - t0 < duration_s:
        if gw.poll() is not None:
            raise RuntimeError(f"gateway exited: {(work / 'rss-gw.log').read_text()}")
        samples.append(rss_kib(gw.pid))
        time.sleep(min(10.0, duration_s / 10))
    samples.append(rss_kib(gw.pid))
    elapsed = time.monotonic() - t0
    from gatewayd.status import fetch, parse

    m = parse(fetch("127.0.0.1", metrics_port))
    acked = m.get("gatewayd_acked_records_total")
    base = rss_kib(idle.pid)
    final, peak = samples[-1] / 1024, max(samples) / 1024
    what = "100 points every 100 ms" if shape == "p100" else "10 x 100 points every 1 s"
    print(
        f"RSS at {shape} ({what}) to {broker} for {duration_s:.0f} s: final {final:.1f} MB, "
        f"peak {peak:.1f} MB, first sample {samples[0] / 1024:.1f} MB vs {base / 1024:.1f} MB for "
        f"an idle interpreter, {final / (base / 1024):.1f}x; goal <= {RSS_GOAL_MB:.0f} MB "
        f"({'at p1000 after 10 minutes' if shape == 'p1000' else 'p1000 only; p100 for reference'}"
        f"): {'met' if peak <= RSS_GOAL_MB else 'NOT met'}; {acked:.0f} records acked "
        f"({acked / elapsed:.0f}/s), buffer depth {m.get('gatewayd_buffer_depth'):.0f}, "
        f"worst event-loop lag {m.get('gatewayd_loop_lag_max_seconds') * 1e3:.0f} ms "
        f"(SQLite commits run on the buffer's thread)"
    )
    gw.terminate()
    gw.wait(10)


def bench_idle_cpu(work: Path, procs: Procs, window_s: float) -> None:
    broker_port, _ = start_broker(procs, work)
    device_port = start_device(procs, work, 10)
    devices = [(f"dev{i}", device_port, 10_000, 10) for i in range(10)]
    cfg = config(work, broker_port, devices)
    idle = procs.spawn([PY, "-c", "import asyncio; asyncio.run(asyncio.sleep(3600))"])
    gw = procs.spawn([PY, "-m", "gatewayd", "run", "--config", str(cfg)], env=gateway_env())
    time.sleep(5)  # start-up and the first polls are not idle
    c0, b0, t0 = cpu_seconds(gw.pid), cpu_seconds(idle.pid), time.monotonic()
    time.sleep(window_s)
    c1, b1, t1 = cpu_seconds(gw.pid), cpu_seconds(idle.pid), time.monotonic()
    used, base = (c1 - c0) / (t1 - t0), (b1 - b0) / (t1 - t0)
    print(
        f"idle CPU: 10 devices x 10 points every 10 s: {used * 100:.2f} % of one core over "
        f"{t1 - t0:.0f} s (about {(c1 - c0) * 1e3 / (t1 - t0):.1f} ms CPU per device poll) vs "
        f"{base * 100:.2f} % for an idle asyncio interpreter; RSS {rss_kib(gw.pid) / 1024:.1f} MB "
        f"vs {rss_kib(idle.pid) / 1024:.1f} MB"
    )
    gw.terminate()
    gw.wait(10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    p.add_argument(
        "--only",
        action="append",
        choices=["ready", "rss", "rss_p1000", "cpu"],
        help="run only this part (repeatable)",
    )
    args = p.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"{'quick' if args.quick else 'full'} run, load average {load}"
    )
    dirs = source_dirs()
    before = pycache_dirs(dirs)
    try:
        with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
            for name, fn, arg in (
                ("ready", bench_ready, 3 if args.quick else 10),
                ("rss", bench_rss, 30.0 if args.quick else 600.0),
                (
                    "rss_p1000",
                    lambda w, p, d: bench_rss(w, p, d, "p1000"),
                    30.0 if args.quick else 600.0,
                ),
                ("cpu", bench_idle_cpu, 20.0 if args.quick else 120.0),
            ):
                if args.only and name not in args.only:
                    continue
                if name != "ready":  # READY measures without bytecode first, then compiles
                    compile_sources(dirs)
                work = Path(tmp) / name
                work.mkdir()
                procs = Procs()
                try:
                    fn(work, procs, arg)  # type: ignore[operator]
                finally:
                    procs.close()
    finally:
        for d in pycache_dirs(dirs) - before:  # leave the checkout as it was
            shutil.rmtree(d, ignore_errors=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at the end: {load}")


if __name__ == "__main__":
    main()
