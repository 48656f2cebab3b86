"""Values to register words, written apart from the driver's decoder so each checks the other."""

from __future__ import annotations

import struct

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


def to_words(value: float, dtype: str, order: str = "ABCD", scale: float = 1.0) -> list[int]:
    raw_value = value if scale == 1.0 else value / scale  # keep 64-bit integers exact
    if not dtype.startswith("float"):
        raw_value = round(raw_value)
    raw = struct.pack(_FMT[dtype], raw_value)
    if order in ("BADC", "DCBA"):
        raw = bytes(raw[i ^ 1] for i in range(len(raw)))
    words = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    return words[::-1] if order in ("CDAB", "DCBA") else words
