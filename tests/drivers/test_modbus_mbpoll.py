"""The simulators checked by an independent client, mbpoll (libmodbus): if our driver and our
simulator shared a mistake, these would catch it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binary
from helpers import free_port, start_modbus_sim

from gatewayd_sim.modbus import ModbusRtuSlave, to_words

MAP = Path(__file__).parent.parent / "fixtures" / "plc_map.toml"


@pytest.fixture
def mbpoll() -> str:
    return require_binary("mbpoll")


def run(mbpoll: str, *args: str) -> str:
    res = subprocess.run(
        [mbpoll, "-1", "-0", "-o", "2", *args], capture_output=True, text=True, timeout=30
    )
    return res.stdout + res.stderr


def values(out: str) -> dict[int, str]:
    """mbpoll prints one `[ref]: value` line per value read."""
    rows = [line.split(":", 1) for line in out.splitlines() if line.startswith("[")]
    return {int(k.strip("[]")): v.strip() for k, v in rows}


@pytest.fixture
def tcp_port(procs: list[subprocess.Popen[bytes]]) -> Iterator[int]:
    port = free_port()
    start_modbus_sim(MAP, port, procs)
    yield port


def test_tcp_slave_answers_mbpoll_with_the_map_values(mbpoll: str, tcp_port: int) -> None:
    p = ["-m", "tcp", "-p", str(tcp_port)]
    regs = values(run(mbpoll, *p, "-t", "4", "-r", "0", "-c", "2", "127.0.0.1"))
    # -123.4 / 0.1 and 54321; mbpoll shows registers above 32767 with their signed value too
    assert regs == {0: "64302 (-1234)", 1: "54321 (-11215)"}
    # int32 CDAB is mbpoll's default (little-endian) word order; float32 ABCD needs -B
    assert values(run(mbpoll, *p, "-t", "4:int", "-r", "2", "127.0.0.1")) == {2: "-2000000000"}
    assert values(run(mbpoll, *p, "-t", "4:float", "-B", "-r", "4", "127.0.0.1")) == {4: "3.25"}
    assert values(run(mbpoll, *p, "-t", "0", "-r", "0", "-c", "2", "127.0.0.1")) == {0: "1", 1: "0"}


def test_tcp_slave_takes_writes_from_mbpoll(mbpoll: str, tcp_port: int) -> None:
    p = ["-m", "tcp", "-p", str(tcp_port)]
    run(mbpoll, *p, "-t", "4", "-r", "20", "127.0.0.1", "4242", "7")
    assert values(run(mbpoll, *p, "-t", "4", "-r", "20", "-c", "2", "127.0.0.1")) == {
        20: "4242",
        21: "7",
    }


def test_tcp_slave_stays_silent_for_an_unknown_unit(mbpoll: str, tcp_port: int) -> None:
    out = run(mbpoll, "-m", "tcp", "-p", str(tcp_port), "-a", "9", "-o", "0.5", "127.0.0.1")
    assert "timed out" in out.lower() and not values(out)


def test_rtu_slave_on_a_pty_answers_mbpoll(mbpoll: str) -> None:
    slave = ModbusRtuSlave(baud=115200).start()
    slave.unit(5).set_words("holding", 10, to_words(-7, "int16") + to_words(3.25, "float32"))
    try:
        rtu = ["-m", "rtu", "-b", "115200", "-P", "none", "-a", "5"]
        assert values(run(mbpoll, *rtu, "-t", "4", "-r", "10", slave.path)) == {10: "65529 (-7)"}
        assert values(run(mbpoll, *rtu, "-t", "4:float", "-B", "-r", "11", slave.path)) == {
            11: "3.25"
        }
        slave.unit(5).defined = {10}
        assert (
            "illegal data address" in run(mbpoll, *rtu, "-t", "4", "-r", "11", slave.path).lower()
        )
    finally:
        slave.stop()


def test_gatewayd_sim_runs_each_simulator_from_the_command_line() -> None:
    for what, expect in (
        ("rtu", "rtu: the demo boiler on /dev/pts/"),
        ("gps", "gps: lines on /dev/pts/"),
    ):
        p = subprocess.Popen(
            [sys.executable, "-m", "gatewayd_sim", what], stdout=subprocess.PIPE, text=True
        )
        try:
            assert p.stdout is not None
            assert p.stdout.readline().startswith(expect)
        finally:
            p.kill()
            p.wait(5)
