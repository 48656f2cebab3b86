"""Simulated Modbus devices: a register map, signal generators, and a TCP server."""

from .datamodel import DataModel
from .encode import to_words
from .signals import Signal, constant, counter, ramp, random_walk, sine
from .tcp import ModbusTcpSlave

__all__ = [
    "DataModel",
    "ModbusTcpSlave",
    "Signal",
    "constant",
    "counter",
    "ramp",
    "random_walk",
    "sine",
    "to_words",
]
