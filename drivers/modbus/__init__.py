"""Modbus driver: poll groups in, Readings out (pymodbus as the transport)."""

from .decode import decode_point, encode_point
from .driver import ModbusDriver
from .planner import ReadRequest, plan_requests

__all__ = ["ModbusDriver", "ReadRequest", "decode_point", "encode_point", "plan_requests"]
