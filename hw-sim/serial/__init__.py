"""Simulated serial lines: pseudo-terminals with true wire timing, and line instruments."""

from .instruments import LineFaults, LineInstrument, gps_lines, kv_lines, nmea
from .pty import Pty, wire_time_s

__all__ = [
    "LineFaults",
    "LineInstrument",
    "Pty",
    "gps_lines",
    "kv_lines",
    "nmea",
    "wire_time_s",
]
