"""The Modbus data types: one table of size, decoding and the byte/word orders each allows.

Invariants:
- every `DataType` a point may name has one row here, and nothing else in the driver keeps a
  second list: config validation (options.make_point: size, orders) and the decoder
  (decode.py: struct format, how a value is read) both read this table;
- an order names the bytes of a value as they arrive, A most significant (decode.py). A row
  allows only the orders that mean something for the type: a 16-bit word or a string has no
  word order to swap (ABCD or BADC), a bit has no byte order at all (ABCD, the default);
- `registers` is per value; a string spans its point's `length` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from gatewayd.config import PointConfig
from gatewayd.config.model import ByteOrder, DataType

ORDERS: tuple[ByteOrder, ...] = get_args(ByteOrder)
BIT_TABLES = ("coil", "discrete")


@dataclass(frozen=True, slots=True)
class ModbusType:
    # bit: one bit of a register (or a coil); word: one register; wide: 2 or 4 registers read
    # through `fmt`; string: ASCII over `length` registers.
    kind: Literal["bit", "word", "wide", "string"]
    registers: int  # per value; 0 for a string (its point's length)
    fmt: str  # struct format, big-endian ("" for bit and string)
    orders: tuple[ByteOrder, ...]


_NO_WORD_SWAP: tuple[ByteOrder, ...] = ("ABCD", "BADC")

TYPES: dict[DataType, ModbusType] = {
    "bool": ModbusType("bit", 1, "", ("ABCD",)),
    "int16": ModbusType("word", 1, ">h", _NO_WORD_SWAP),
    "uint16": ModbusType("word", 1, ">H", _NO_WORD_SWAP),
    "int32": ModbusType("wide", 2, ">i", ORDERS),
    "uint32": ModbusType("wide", 2, ">I", ORDERS),
    "float32": ModbusType("wide", 2, ">f", ORDERS),
    "int64": ModbusType("wide", 4, ">q", ORDERS),
    "uint64": ModbusType("wide", 4, ">Q", ORDERS),
    "float64": ModbusType("wide", 4, ">d", ORDERS),
    "string": ModbusType("string", 0, "", _NO_WORD_SWAP),
}


def register_count(p: PointConfig) -> int:
    """How many 16-bit registers (or bits, for coil/discrete) the point spans."""
    if p.table in BIT_TABLES:
        return 1
    return p.length if p.type == "string" else TYPES[p.type].registers


def order_problem(dtype: DataType, order: ByteOrder) -> tuple[str, str] | None:
    """(problem, fix) when `order` means nothing for `dtype`, else None."""
    allowed = TYPES[dtype].orders
    if order in allowed:
        return None
    if TYPES[dtype].kind == "bit":
        return f'{order!r} orders bytes, but type = "{dtype}" is one bit', "remove order"
    return (
        f'{order!r} swaps words, but type = "{dtype}" has no word order',
        f"use {' or '.join(map(repr, allowed))} (bytes swapped within each word)",
    )


__all__ = ["BIT_TABLES", "ORDERS", "TYPES", "ModbusType", "order_problem", "register_count"]
