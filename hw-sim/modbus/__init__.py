"""Simulated Modbus devices: register maps, signal generators, faults, TCP and RTU slaves, and
a hostile slave that answers with every fault (hostile.py)."""

from .datamodel import DataModel
from .encode import to_words
from .faults import Faults
from .hostile import HostileSlave
from .rtu import ModbusRtuSlave
from .signals import Signal, constant, counter, ramp, random_walk, sine
from .tcp import ModbusTcpSlave

__all__ = [
    "DataModel",
    "Faults",
    "HostileSlave",
    "ModbusRtuSlave",
    "ModbusTcpSlave",
    "Signal",
    "constant",
    "counter",
    "ramp",
    "random_walk",
    "sine",
    "to_words",
]
