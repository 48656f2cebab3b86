"""The options of the serial line driver and its point schema, declared through the contract.

Invariant: every key a serial_line device or point may carry is a field below; config/parse.py
knows none of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from gatewayd.config import ConfigError, DeviceConfig, PointConfig
from gatewayd.drivers.options import At, OptionSet, option

LineFormat = Literal["nmea", "kv", "csv", "regex"]


@dataclass(frozen=True, slots=True)
class SerialLineOptions:
    serial_port: str = option("", doc='the serial device, e.g. "/dev/ttyUSB1" (required)')
    baud: int = option(9600, lo=50, hi=4_000_000)
    parity: Literal["N", "E", "O"] = option("N")
    stopbits: int = option(1, lo=1, hi=2)
    bytesize: int = option(8, lo=5, hi=8)
    line_format: LineFormat = option("kv")
    line_regex: str = option("", doc="line_format = regex: named groups are the fields")
    csv_delimiter: str = option(",")


@dataclass(frozen=True, slots=True)
class LinePoint:
    """A point of a serial line instrument: a named field of a line, no register."""

    field: str = option(doc='the field of a line that holds the value (NMEA: "GGA.lat")')
    type: Literal["float64", "int64", "string", "bool"] = option("float64")
    scale: float = option(1.0)
    offset: float = option(0.0)
    unit: str = option("")


def make_point(v: LinePoint, base: PointConfig, at: At) -> PointConfig:
    return replace(base, field=v.field, type=v.type, scale=v.scale, offset=v.offset, unit=v.unit)


def check(device: DeviceConfig, at: At) -> None:
    o: SerialLineOptions = device.options
    if not o.serial_port:
        raise ConfigError(
            at("serial_port"),
            f"missing, demanded by driver = {device.driver!r}",
            'give the serial device, e.g. "/dev/ttyUSB0"',
        )
    if o.line_format != "regex":
        return
    try:
        groups = set(re.compile(o.line_regex).groupindex)
    except re.error as exc:
        raise ConfigError(
            at("line_regex"), f"not a valid regular expression: {exc}", "fix the pattern"
        ) from exc
    if not groups:
        raise ConfigError(
            at("line_regex"), "has no named group", "name each value, e.g. (?P<temp>[-0-9.]+)"
        )
    for i, p in enumerate(device.points):
        if p.field not in groups:
            raise ConfigError(
                f"{at('points')}[{i}].field",
                f"{p.field!r} is not a group of line_regex",
                f"use one of {sorted(groups)}",
            )


OPTIONS = OptionSet(device=SerialLineOptions, point=LinePoint, make_point=make_point, check=check)
