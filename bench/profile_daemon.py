"""Where the daemon's CPU goes at a steady profile: py-spy samples a running `gatewayd run`.

    .venv/bin/python bench/profile_daemon.py p100|p1000 [seconds] [rate_hz]

Prints the top functions by self time and by inclusive time (share of samples), and the CPU per
reading of the same run, so the shares convert to microseconds per reading.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import LatencySubscriber, Mosquitto, cpu_seconds, rig, wait_for

SHAPES = {"p100": (1, 100, 100), "p1000": (10, 100, 1000)}


def main() -> None:
    name = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 15
    rate = sys.argv[3] if len(sys.argv) > 3 else "250"  # py-spy's samples per second
    devices, points, interval = SHAPES[name]
    spy = str(Path(sys.executable).parent / "py-spy")
    with rig() as r, tempfile.TemporaryDirectory() as tmp:
        r.start_devices(devices, points)
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub = LatencySubscriber(broker.port)
        gw = r.start_gateway(r.config(broker.port, points, interval))
        wait_for(lambda: sub.unique > 0, 20, "first reading")
        time.sleep(3)
        out = Path(tmp) / "raw.txt"
        n0, c0 = sub.unique, cpu_seconds(gw.pid)
        subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(gw.pid),
                "-d",
                str(int(seconds)),
                "-r",
                rate,
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        n1, c1 = sub.unique, cpu_seconds(gw.pid)
        sub.close()
        raw = out.read_text() if out.exists() else ""
    us = 1e6 * (c1 - c0) / max(n1 - n0, 1)
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        k = int(n)
        frames = stack.split(";")
        idle = any(s in frames[-1] for s in ("select (", "_worker (", "wait (", "epoll", "poll ("))
        if idle:
            continue
        total += k
        self_t[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    print(f"{name}: {us:.1f} us CPU/reading, {total} busy samples")
    for title, c in (("self", self_t), ("inclusive", incl)):
        print(f"-- top by {title} (share of busy samples, ~us/reading)")
        for f, k in c.most_common(40):
            print(f"{100 * k / total:5.1f}%  {us * k / total:5.2f}  {f}")


if __name__ == "__main__":
    main()
