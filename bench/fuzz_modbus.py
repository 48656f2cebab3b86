"""Fuzz the Modbus drivers against the hostile slave (hw-sim/modbus/hostile.py), per transport:
Modbus TCP, RTU on a pty (as fast as a USB adapter, and paced like a 115200 line) and RTU over
TCP. The slave runs in its own process and logs what each register held whenever it answered;
every reading the real driver publishes as good is checked against that log.

Prints per transport: replies (requests the slave answered, with any behaviour), good readings,
wrong good readings (must be 0), bad readings by reason, and this process's RSS at the start,
half way and the end (it must stay flat: nothing grows with the number of faults; the index of
true values kept for the check covers the last minute).

    .venv/bin/python bench/fuzz_modbus.py            # >= 10,000 replies per transport
    .venv/bin/python bench/fuzz_modbus.py --quick    # 1,000
    .venv/bin/python bench/fuzz_modbus.py --only paced --replies 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from gatewayd.config import DeviceConfig, PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus import (
    ModbusDriver,
    ModbusRtuDriver,
    ModbusRtuOverTcpDriver,
    encode_point,
)
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality

TIMEOUT = 0.05


def _p(pid: str, address: int, **kw: Any) -> PointConfig:
    return PointConfig(id=pid, table=kw.pop("table", "holding"), address=address, **kw)


# Same-shape reads at different addresses (a misattributed reply shows), merged reads, all types.
POINTS = (
    _p("u16", 0),
    _p("i16", 1, type="int16"),
    _p("u32", 2, type="uint32", order="CDAB"),
    _p("i32", 10, type="int32", order="BADC"),
    _p("f32", 20, type="float32"),
    _p("u64", 30, type="uint64", order="DCBA"),
    _p("one", 60),
    _p("two", 90),
    _p("in", 5, table="input", type="int32"),
)


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class TrueValues:
    """Tails the slave's log: what each register held in replies of the last minute."""

    def __init__(self, path: Path) -> None:
        self._f: IO[str] = open(path)  # noqa: SIM115
        self.replies = 0
        self._seen: dict[tuple[int, int], dict[tuple[int, ...], float]] = {}

    def update(self) -> None:
        for line in self._f:
            if not line.endswith("\n"):  # a line still being written: read it next time
                self._f.seek(self._f.tell() - len(line))
                break
            rec = json.loads(line)
            if "request" in rec:
                self.replies += 1
                continue
            words = rec["words"]
            for i in range(rec["count"]):
                key = (rec["fc"], rec["address"] + i)
                self._seen.setdefault(key, {})[tuple(words[i : i + 4])] = rec["t"]
        if self.replies % 1000 < 10:
            cutoff = time.time() - 60
            for runs in self._seen.values():
                for run in [r for r, t in runs.items() if t < cutoff]:
                    del runs[run]

    def sent(self, p: PointConfig, words: list[int]) -> bool:
        runs = self._seen.get((3 if p.table == "holding" else 4, p.address), {})
        return any(run[: len(words)] == tuple(words) for run in runs)


async def fuzz(name: str, args: list[str], make: Any, target: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "hostile.jsonl"
        log.touch()
        cmd = [sys.executable, "-m", "gatewayd_sim", "hostile", "--log", str(log)]
        cmd += ["--timeout", str(TIMEOUT), "--seed", "1", *args]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert sim.stdout is not None
            # "hostile: modbus tcp on HOST:PORT" or "hostile: rtu on PATH at ..."
            where = sim.stdout.readline().split(" on ", 1)[1].split()[0]
            drv = make(where.rsplit(":", 1)[-1] if "tcp" in args[1] else where)
            group = PollGroup("fuzz", 1000, POINTS)
            truth = TrueValues(log)
            by_id = {p.id: p for p in POINTS}
            good = wrong = 0
            bad: Counter[str] = Counter()
            await drv.poll(group)
            rss0, rss_mid, t0 = rss_kib(), 0, time.monotonic()
            while truth.replies < target:
                if not rss_mid and truth.replies >= target // 2:
                    rss_mid = rss_kib()
                readings = await drv.poll(group)
                truth.update()
                for r in readings:
                    if r.quality is not Quality.GOOD:
                        bad[r.reason or "(none)"] += 1
                        continue
                    good += 1
                    p = by_id[r.point.split("/", 1)[1]]
                    if not truth.sent(p, encode_point(p, r.value)):  # type: ignore[arg-type]
                        wrong += 1
                        print(f"  WRONG GOOD {r.point} = {r.value!r}")
            rss1, secs = rss_kib(), time.monotonic() - t0
            await drv.close()
        finally:
            sim.kill()
            sim.wait()
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))
    print(
        f"{name:22s} replies {truth.replies:6d} in {secs:5.0f} s  good {good:6d}  "
        f"WRONG GOOD {wrong}  bad {sum(bad.values()):5d}  RSS {rss0} -> {rss_mid} -> {rss1} KiB\n"
        f"{'':22s} bad by reason: {reasons}",
        flush=True,
    )


def _dev(driver: str, **kw: Any) -> DeviceConfig:
    return device_config(
        id="fuzz",
        driver=driver,
        points=POINTS,
        timeout_s=TIMEOUT,
        max_gap=8,
        busy_delay_s=0.005,
        fail_threshold=10**6,  # keep asking: the bench is about framing, not backoff
        **kw,
    )


def main() -> None:
    logging.getLogger("gatewayd").setLevel(logging.ERROR)  # thousands of device_failing lines
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1,000 replies per transport")
    ap.add_argument("--replies", type=int, default=0, help="replies per transport")
    ap.add_argument("--only", choices=["tcp", "pty", "paced", "rtu-tcp"], help="one transport")
    a = ap.parse_args()
    target = a.replies or (1000 if a.quick else 10_000)
    print(f"Hostile-slave fuzz, {target} replies per transport, timeout {TIMEOUT} s")
    runs: list[tuple[str, list[str], Any]] = [
        (
            "Modbus TCP",
            ["--transport", "tcp"],
            lambda port: ModbusDriver(_dev("modbus_tcp", port=int(port))),
        ),
        (
            "RTU pty, USB-fast",
            ["--transport", "rtu", "--baud", "115200"],
            lambda path: ModbusRtuDriver(_dev("modbus_rtu", serial_port=path, baud=115200)),
        ),
        (
            "RTU pty, paced 115200",
            ["--transport", "rtu", "--baud", "115200", "--pacing", "line"],
            lambda path: ModbusRtuDriver(_dev("modbus_rtu", serial_port=path, baud=115200)),
        ),
        (
            "RTU over TCP",
            ["--transport", "rtu-tcp"],
            lambda port: ModbusRtuOverTcpDriver(_dev("modbus_rtu_over_tcp", port=int(port))),
        ),
    ]
    keys = ["tcp", "pty", "paced", "rtu-tcp"]
    for key, (name, args, make) in zip(keys, runs, strict=True):
        if a.only in (None, key):
            asyncio.run(fuzz(name, args, make, target))


if __name__ == "__main__":
    main()
