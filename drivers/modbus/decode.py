"""Register words to values and back, for every data type and byte/word order.

Orders name the bytes of a 32-bit value as they arrive on the wire, A being the most significant:
ABCD big-endian; CDAB word-swapped; BADC byte-swapped within each word; DCBA both. For 64-bit
values the same two swaps apply to all four words. pymodbus's converter only swaps words, so the
byte swaps are done here.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from gatewayd.config import PointConfig
from gatewayd.reading import Value

_FMT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}
_WORD_SWAP = {"ABCD": False, "CDAB": True, "BADC": False, "DCBA": True}
_BYTE_SWAP = {"ABCD": False, "CDAB": False, "BADC": True, "DCBA": True}


def _to_wire_order(words: Sequence[int], order: str) -> bytes:
    ws = list(reversed(words)) if _WORD_SWAP[order] else list(words)
    raw = b"".join(w.to_bytes(2, "big") for w in ws)
    if _BYTE_SWAP[order]:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


def decode_point(p: PointConfig, words: Sequence[int]) -> Value:
    """Decode a point from its registers (or a single bit for coil/discrete tables)."""
    if p.table in ("coil", "discrete"):
        return bool(words[0])
    if p.type == "bool":
        return bool((words[0] >> (p.bit or 0)) & 1)
    if p.type == "string":
        raw = _to_wire_order(words, "BADC" if _BYTE_SWAP[p.order] else "ABCD")
        return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip()
    (v,) = struct.unpack(_FMT[p.type], _to_wire_order(words, p.order))
    if p.scale != 1.0 or p.offset != 0.0:
        return float(v) * p.scale + p.offset
    return float(v) if p.type.startswith("float") else int(v)


def encode_point(p: PointConfig, value: Value) -> list[int]:
    """Registers (or one bit) that make `decode_point` return `value`; inverse of the scaling."""
    if p.table in ("coil", "discrete") or p.type == "bool":
        return [1 if value else 0]
    if p.type == "string":
        raw = str(value).encode("ascii")[: p.length * 2].ljust(p.length * 2, b"\x00")
        return _from_wire_order(raw, "BADC" if _BYTE_SWAP[p.order] else "ABCD")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{p.id}: expected a number, got {type(value).__name__}")
    raw_value: float = value
    if p.scale != 1.0 or p.offset != 0.0:  # unscaled integers stay exact up to 64 bits
        raw_value = (float(value) - p.offset) / p.scale
    if not p.type.startswith("float"):
        raw_value = round(raw_value)
    return _from_wire_order(struct.pack(_FMT[p.type], raw_value), p.order)


def _from_wire_order(raw: bytes, order: str) -> list[int]:
    if _BYTE_SWAP[order]:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if _WORD_SWAP[order] else words
