"""Where the daemon's CPU goes at a steady profile: py-spy samples a running `gatewayd run`.

    .venv/bin/python bench/profile_daemon.py p100|p1000 [seconds] [rate_hz] [--gil] [SITE]

Prints the CPU per reading of each thread of the daemon (/proc/<pid>/task/*/schedstat) and the
top functions by self time and by inclusive time (share of samples), so the shares convert to
microseconds per reading. `--gil` samples only the thread holding the GIL (without it, py-spy
counts a thread waiting to take the GIL back as busy). SITE: a folder holding another `gatewayd`
package to run instead of this worktree (see bench/ab.py).
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


def thread_ns(pid: int) -> dict[str, int]:
    """CPU nanoseconds of each live thread (schedstat), by thread id ("<tid> <name>")."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        out[f"{task.name} {comm}"] = ns
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--gil"]
    gil = ["--gil"] if "--gil" in sys.argv else []
    name = args[0]
    seconds = float(args[1]) if len(args) > 1 else 15
    rate = args[2] if len(args) > 2 else "250"  # py-spy's samples per second
    site = Path(args[3]) if len(args) > 3 else None
    devices, points, interval = SHAPES[name]
    spy = str(Path(sys.executable).parent / "py-spy")
    with rig() as r, tempfile.TemporaryDirectory() as tmp:
        r.start_devices(devices, points)
        broker = Mosquitto(r.work / "mq")
        broker.start()
        r.procs.append(broker.proc)  # type: ignore[arg-type]
        sub = LatencySubscriber(broker.port)
        gw = r.start_gateway(r.config(broker.port, points, interval), cwd=site)
        wait_for(lambda: sub.unique > 0, 20, "first reading")
        time.sleep(3)
        out = Path(tmp) / "raw.txt"
        n0, c0, t0 = sub.unique, cpu_seconds(gw.pid), thread_ns(gw.pid)
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
                *gil,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        n1, c1, t1 = sub.unique, cpu_seconds(gw.pid), thread_ns(gw.pid)
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
    if gil:
        print("   (--gil: shares of the GIL-held samples; the us column spreads all CPU over them)")
    for tid, ns in sorted(t1.items()):
        if tid in t0 and ns > t0[tid]:
            print(f"   thread {tid}: {1e-3 * (ns - t0[tid]) / max(n1 - n0, 1):.2f} us/reading")
    for title, c in (("self", self_t), ("inclusive", incl)):
        print(f"-- top by {title} (share of busy samples, ~us/reading)")
        for f, k in c.most_common(40):
            print(f"{100 * k / total:5.1f}%  {us * k / total:5.2f}  {f}")


if __name__ == "__main__":
    main()
