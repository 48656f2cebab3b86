"""The demo plant: a boiler whose register map matches config/examples/gateway.toml."""

from __future__ import annotations

from collections.abc import Callable

from .modbus.encode import to_words
from .modbus.signals import counter, random_walk, sine
from .modbus.slave import Slave


def _enc(dtype: str, order: str = "ABCD", scale: float = 1.0) -> Callable[[float], list[int]]:
    return lambda v: to_words(v, dtype, order, scale)


def boiler(slave: Slave, unit: int = 1) -> None:
    slave.feed(unit, "holding", 0, sine(65.0, 5.0, 60.0), _enc("int16", scale=0.1))
    slave.feed(unit, "holding", 1, sine(50.0, 4.0, 60.0), _enc("int16", scale=0.1))
    slave.feed(unit, "holding", 2, random_walk(1.5, 0.02, 1.0, 2.0), _enc("uint16", scale=0.01))
    slave.feed(unit, "holding", 3, counter(1, 5.0), _enc("uint32", "CDAB"))
    slave.feed(unit, "holding", 5, sine(20.0, 10.0, 30.0), _enc("float32"))
    slave.unit(unit).set_words("holding", 10, to_words(65.0, "int16", scale=0.1))
