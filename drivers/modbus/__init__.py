"""Modbus drivers (TCP, RTU, RTU over TCP): poll groups in, Readings out."""

from .decode import decode_point, encode_point
from .driver import ModbusDriver, ModbusRtuDriver, ModbusRtuOverTcpDriver
from .planner import ReadRequest, plan_requests

__all__ = [
    "ModbusDriver",
    "ModbusRtuDriver",
    "ModbusRtuOverTcpDriver",
    "ReadRequest",
    "decode_point",
    "encode_point",
    "plan_requests",
]
