"""The options of the Modbus drivers and their point schema, declared through the plugin contract.

Invariants:
- Every key a Modbus device or point table may carry is a field below, with its default and
  range; core config (config/devices.py) knows none of them (it reads them through each
  driver's `options`).
- The checks keep the messages config/parse.py had when it owned these keys (tests/config_cases);
  sizes and the orders a type allows come from the one table of data types (types.py).
- A deprecated key (`DEPRECATED`) is still accepted, with its old range, and has no effect;
  a device that gives it logs one `option_deprecated` WARNING naming the key's place, once per
  process and place (check and load may both read one document).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from gatewayd.config import ConfigError, DeviceConfig, PointConfig
from gatewayd.config.model import ByteOrder, DataType, RegisterTable
from gatewayd.drivers.options import At, OptionSet, Placed, option
from gatewayd.logs import quote

from .types import BIT_TABLES, order_problem, register_count

log = logging.getLogger("gatewayd.drivers.modbus")

Parity = Literal["N", "E", "O"]

# Key -> why it has no effect. A down device is probed once per poll interval (driver.py): one
# short read is cheap, and a probe delayed by a backoff would delay its readings' return by as
# much, so the backoff these keys were declared for was never built.
DEPRECATED = {
    "backoff_base_s": "a down device is probed every poll interval",
    "backoff_cap_s": "a down device is probed every poll interval",
}


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    """What every Modbus device has: the unit id, request planning and fault handling."""

    unit: int = option(1, lo=0, hi=255, doc="unit id (slave address)")
    # Request planning: registers a merged read may bridge, and the device's read limits.
    max_gap: int = option(16, lo=0, hi=124, doc="registers a merged read may bridge")
    max_registers: int = option(
        125, lo=1, hi=125, doc="lower it for devices that refuse long reads"
    )
    max_bits: int = option(2000, lo=1, hi=2000)
    # Faults: exception 06 (busy) retries, and when a device failing polls in a row is down.
    busy_retries: int = option(2, lo=0, hi=10, doc="exception 06 (busy): retries")
    busy_delay_s: float = option(0.1, lo=0.0, hi=10.0, doc="first busy retry delay, doubling")
    fail_threshold: int = option(3, lo=1, hi=100, doc="failed polls in a row before down")
    # Deprecated, no effect (DEPRECATED): None when absent, so a given key can be told apart.
    backoff_base_s: float | None = option(None, lo=0.01, hi=3600.0, doc="deprecated, no effect")
    backoff_cap_s: float | None = option(None, lo=0.01, hi=24 * 3600.0, doc="deprecated, no effect")
    write_multiple: bool = option(False, doc="always write with fc 15/16")
    # For gateways that answer with unit 0 or 255. Off by default: another unit is wrong_unit.
    accept_unit_ids: tuple[int, ...] | Literal["any"] = option(
        (), lo=0, hi=255, doc='unit ids a reply may carry besides `unit`, or "any"'
    )


@dataclass(frozen=True, slots=True)
class ModbusTcpOptions(ModbusOptions):
    host: str = option("127.0.0.1", doc="the device's (or TCP gateway's) address")
    port: int = option(502, lo=1, hi=65535)


@dataclass(frozen=True, slots=True)
class ModbusRtuOptions(ModbusOptions):
    """A device on a serial line; the devices of one port share the bus settings."""

    serial_port: str = option("", doc='the serial device, e.g. "/dev/ttyUSB0" (required)')
    baud: int = option(9600, lo=50, hi=4_000_000)
    parity: Parity = option("N")
    stopbits: int = option(1, lo=1, hi=2)
    bytesize: int = option(8, lo=5, hi=8)
    request_delay_s: float = option(
        0.0, lo=0.0, hi=10.0, doc="extra quiet time between requests on a bus, beyond t3.5"
    )


@dataclass(frozen=True, slots=True)
class ModbusRtuOverTcpOptions(ModbusTcpOptions):
    """RTU frames through a TCP serial gateway: host and port name the bus; the line settings
    time the quiet gap (t3.5) between frames as on the serial side."""

    baud: int = option(9600, lo=50, hi=4_000_000)
    parity: Parity = option("N")
    stopbits: int = option(1, lo=1, hi=2)
    bytesize: int = option(8, lo=5, hi=8)
    request_delay_s: float = option(
        0.0, lo=0.0, hi=10.0, doc="extra quiet time between requests on a bus, beyond t3.5"
    )


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """A point's keys beside id and interval_ms; `type` defaults by table (bool or uint16)."""

    table: RegisterTable = option(doc="coil, discrete, input or holding")
    address: int = option(lo=0, hi=65535, fix="use a 0-based register address")
    type: DataType | None = option(None, doc="bool in coil/discrete, else uint16 by default")
    order: ByteOrder = option("ABCD", doc="bytes as they arrive, A most significant")
    scale: float = option(1.0)
    offset: float = option(0.0)
    unit: str = option("")
    length: int = option(0, lo=0, hi=125, doc="registers, for strings")
    bit: int | None = option(None, lo=0, hi=15, doc="bit-in-register, 0 = least significant")
    writable: bool = option(False)
    min: float | None = option(None)
    max: float | None = option(None)


def make_point(v: RegisterPoint, base: PointConfig, at: At) -> PointConfig:
    bit_table = v.table in BIT_TABLES
    dtype = v.type or ("bool" if bit_table else "uint16")
    if bit_table and dtype != "bool":
        raise ConfigError(
            at("type"),
            f"{dtype!r} is not possible in a {v.table} table",
            'use type = "bool" or a register table',
        )
    wrong_order = order_problem(dtype, v.order)
    if wrong_order is not None:
        raise ConfigError(at("order"), *wrong_order)
    if dtype == "string" and v.length == 0:
        raise ConfigError(
            at("length"),
            'missing, demanded by type = "string"',
            "give the string's length in registers",
        )
    if dtype == "bool" and not bit_table and v.bit is None:
        raise ConfigError(
            at("bit"),
            'missing, demanded by type = "bool" in a register',
            "give the bit number, 0 = least significant",
        )
    cfg = replace(
        base,
        table=v.table,
        address=v.address,
        type=dtype,
        order=v.order,
        scale=v.scale,
        offset=v.offset,
        unit=v.unit,
        length=v.length,
        bit=v.bit,
        writable=v.writable,
        min=v.min,
        max=v.max,
    )
    if cfg.address + register_count(cfg) > 65536:
        raise ConfigError(
            at("address"), "the point ends past register 65535", "lower the address or the length"
        )
    if cfg.min is not None and cfg.max is not None and cfg.min > cfg.max:
        raise ConfigError(at("min"), f"{cfg.min} is above max = {cfg.max}", "swap them")
    if cfg.writable and v.table in ("discrete", "input"):
        raise ConfigError(
            at("writable"),
            f"a {v.table} table is read-only",
            "use a coil or holding register for writable points",
        )
    return cfg


_warned: set[str] = set()  # places warned about: a document is parsed more than once per load


def warn_deprecated(device: DeviceConfig, at: At) -> None:
    for key, why in DEPRECATED.items():
        if getattr(device.options, key) is not None and at(key) not in _warned:
            _warned.add(at(key))
            log.warning(
                "option_deprecated place=%s problem=%s fix=%s",
                at(key),
                quote(f"has no effect: {why}"),
                quote("remove it"),
            )


def require_serial_port(device: DeviceConfig, at: At) -> None:
    if not device.options.serial_port:
        raise ConfigError(
            at("serial_port"),
            f"missing, demanded by driver = {device.driver!r}",
            'give the serial device, e.g. "/dev/ttyUSB0"',
        )


def _check_rtu(device: DeviceConfig, at: At) -> None:
    require_serial_port(device, at)
    _check_rtu_unit(device, at)


def _check_rtu_unit(device: DeviceConfig, at: At) -> None:
    warn_deprecated(device, at)
    unit = device.options.unit
    if not 1 <= unit <= 247:
        raise ConfigError(
            at("unit"),
            f"{unit} is not a device address on an RTU bus (0 is broadcast, never answered)",
            "use 1..247",
        )


BUS_SETTINGS = ("baud", "parity", "stopbits", "bytesize", "request_delay_s")


def one_setting_per_bus(devices: Sequence[Placed]) -> None:
    """Devices on one serial port share it, so they must agree on how the line is driven."""
    first: dict[str, Placed] = {}
    for p in devices:
        o = p.device.options
        f = first.setdefault(o.serial_port, p)
        for key in BUS_SETTINGS:
            if getattr(o, key) != getattr(f.device.options, key):
                raise ConfigError(
                    f"devices[{p.index}].{key}",
                    f"{getattr(o, key)!r} differs from devices[{f.index}] on the same serial_port "
                    f"{o.serial_port!r} ({getattr(f.device.options, key)!r})",
                    "use one setting for every device on a bus",
                )


# Vendor register numbers: a table digit, then the 1-based register (5 or 6 digits). Coils
# (0xxxx) cannot be told from a plain address.
_VENDOR_PREFIX = {"holding": 4, "input": 3, "discrete": 1}


def vendor_address(p: Mapping[str, Any], place: str) -> ConfigError | None:
    """`gatewayd check`'s advice on a raw point: 400001 is holding register 0, not an address."""
    a, table = p.get("address"), p.get("table")
    prefix = _VENDOR_PREFIX.get(table) if isinstance(table, str) else None
    if prefix is None or not isinstance(a, int) or isinstance(a, bool):
        return None
    for base in (prefix * 10_000 + 1, prefix * 100_000 + 1):
        if base <= a < base + (9_999 if base < 100_000 else 65_536):
            return ConfigError(
                f"{place}.address",
                f"{a} looks like a vendor (table digit + 1-based) number for {table} register "
                f"{a - base}",
                f"addresses here are 0-based within the table: write address = {a - base}",
            )
    return None


# What every Modbus driver declares alike: register points, and check's vendor-address advice.
_registers = partial(
    OptionSet, point=RegisterPoint, make_point=make_point, lint_point=vendor_address
)
TCP = _registers(device=ModbusTcpOptions, check=warn_deprecated)
RTU = _registers(device=ModbusRtuOptions, check=_check_rtu, check_all=one_setting_per_bus)
RTU_OVER_TCP = _registers(device=ModbusRtuOverTcpOptions, check=_check_rtu_unit)
