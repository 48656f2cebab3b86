"""Line-framed serial instruments (NMEA 0183, key=value, CSV, regex): lines in, Readings out."""

from .driver import SerialLineDriver
from .parse import LineError, parse_line

__all__ = ["LineError", "SerialLineDriver", "parse_line"]
