"""An independent slave: pymodbus 3.16.1's server, in its own process, over Modbus TCP and over
RTU on a plain socat pty pair at 19200 baud (no pacing: replies arrive as fast as the kernel
moves them, as from a USB adapter). Every type and byte order must decode exactly, and every
reading over the unpaced pty must be good."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from conftest import require_binary
from helpers import free_port, wait_port
from modbus_env import VALUES, group, point, socat_pair

from gatewayd.config import PointConfig
from gatewayd.drivers.modbus import ModbusDriver, ModbusRtuDriver
from gatewayd.drivers.options import device_config
from gatewayd.reading import Quality
from gatewayd_sim.modbus import to_words

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# Serves the registers given as JSON on argv; pymodbus's device context adds 1 to every
# address, so the block starts at 1 for our 0-based addresses.
_SERVER = """
import asyncio, json, sys
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer
words, coils = json.loads(sys.argv[2]), json.loads(sys.argv[3])
dev = ModbusDeviceContext(
    hr=ModbusSequentialDataBlock(1, words), co=ModbusSequentialDataBlock(1, coils)
)
ctx = ModbusServerContext(devices={1: dev}, single=False)
if sys.argv[1] == "tcp":
    asyncio.run(StartAsyncTcpServer(ctx, address=("127.0.0.1", int(sys.argv[4]))))
else:
    asyncio.run(StartAsyncSerialServer(ctx, port=sys.argv[4], baudrate=19200))
"""


def every_type() -> tuple[list[int], list[PointConfig]]:
    words: list[int] = []
    pts = []
    for dtype, value in VALUES.items():
        for order in ORDERS:
            w = to_words(value, dtype, order)
            pts.append(point(f"{dtype}_{order}", len(words), type=dtype, order=order))
            words += w
    return words, pts


def serve(kind: str, where: str, words: list[int], procs: list[subprocess.Popen[bytes]]) -> None:
    import json

    coils = [1, 0, 1, 1, 0, 0, 0, 1]
    procs.append(
        subprocess.Popen(
            [sys.executable, "-c", _SERVER, kind, json.dumps(words), json.dumps(coils), where],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )


def check_exact(drv: ModbusDriver, pts: list[PointConfig], polls: int) -> None:
    async def body() -> None:
        # the server opens its end in its own time: wait (up to 10 s) for a first good poll
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            if (await drv.poll(group(drv.device)))[0].quality is Quality.GOOD:
                break
        for _ in range(polls):
            readings = await drv.poll(group(drv.device))
            bad = [r for r in readings if r.quality is not Quality.GOOD]
            assert not bad, bad
            got = {r.point.split("/")[1]: r.value for r in readings}
            for p in pts:
                if p.table == "coil":
                    assert got[p.id] is bool([1, 0, 1, 1][p.address]), p.id
                else:
                    assert got[p.id] == VALUES[p.type], p.id
        await drv.close()

    asyncio.run(body())


def test_pymodbus_tcp_server_every_type_exactly(procs: list[subprocess.Popen[bytes]]) -> None:
    words, pts = every_type()
    pts += [point(f"coil{i}", i, table="coil", type="bool") for i in range(4)]
    port = free_port()
    serve("tcp", str(port), words, procs)
    wait_port(port)
    dev = device_config(id="peer", driver="modbus_tcp", port=port, timeout_s=2.0, points=tuple(pts))
    check_exact(ModbusDriver(dev), pts, 3)


def test_pymodbus_rtu_server_on_an_unpaced_socat_pty_every_reading_good(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    socat = require_binary("socat")
    a, b = socat_pair(socat, tmp_path, procs)
    words, pts = every_type()
    pts += [point(f"coil{i}", i, table="coil", type="bool") for i in range(4)]
    serve("rtu", a, words, procs)
    # one register read at a time, so every poll is many small exchanges (the case that lost
    # nearly every reply when input was flushed after the request's line time)
    dev = device_config(
        id="peer",
        driver="modbus_rtu",
        serial_port=b,
        baud=19200,
        timeout_s=1.0,
        max_gap=0,
        points=tuple(pts),
    )

    check_exact(ModbusRtuDriver(dev), pts, 10)
