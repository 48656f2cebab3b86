"""Register words to values and back, for every data type and byte/word order.

Orders name the bytes of a 32-bit value as they arrive on the wire, A being the most significant:
ABCD big-endian; CDAB word-swapped; BADC byte-swapped within each word; DCBA both. For 64-bit
values the same two swaps apply to all four words. pymodbus's converter only swaps words, so the
byte swaps are done here. Sizes and struct formats come from the one table of data types
(types.py), which config validation reads too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter

from gatewayd.config import PointConfig
from gatewayd.reading import Value

from .types import BIT_TABLES, TYPES

_WORD_SWAP = {"ABCD": False, "CDAB": True, "BADC": False, "DCBA": True}
_BYTE_SWAP = {"ABCD": False, "CDAB": False, "BADC": True, "DCBA": True}


def _to_wire_order(words: Sequence[int], order: str) -> bytes:
    ws = list(reversed(words)) if _WORD_SWAP[order] else list(words)
    raw = b"".join(w.to_bytes(2, "big") for w in ws)
    if _BYTE_SWAP[order]:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    return raw


Decoder = Callable[[Sequence[int]], list[Value]]
# One point of a response: (the words, the words as big-endian bytes, as byte-swapped bytes).
_PointDecoder = Callable[[Sequence[int], bytes, bytes], Value]


def decode_point(p: PointConfig, words: Sequence[int]) -> Value:
    """Decode a point from its registers (or a single bit for coil/discrete tables)."""
    return request_decoder((p,), p.address, len(words))(words)[0]


def request_decoder(points: Sequence[PointConfig], start: int, count: int) -> Decoder:
    """The values of `points` from the `count` words (or bits) read at `start`, in point order.

    Built once per planned request, so a poll makes no per-point decisions: a request of only
    unscaled uint16 registers (the common one) or only bits is one C-level itemgetter; other
    points are closures over their offset and a precompiled struct that reads the response's
    bytes, packed once per response (big-endian, and byte-swapped when an order needs it).
    """
    ats = [p.address - start for p in points]
    if all(p.table in BIT_TABLES for p in points):
        bits = itemgetter(*ats)
        if len(ats) == 1:
            return lambda words: [bool(bits(words))]
        return lambda words: list(map(bool, bits(words)))
    if all(_is_plain_word(p) for p in points):
        regs = itemgetter(*ats)
        if len(ats) == 1:
            return lambda words: [regs(words)]
        return lambda words: list(regs(words))
    decoders = [_point_decoder(p, at) for p, at in zip(points, ats, strict=True)]
    wide = [p for p in points if p.table not in BIT_TABLES and TYPES[p.type].kind == "wide"]
    pack_be = struct.Struct(f">{count}H").pack if wide else None
    swapped = any(_WORD_SWAP[p.order] != _BYTE_SWAP[p.order] for p in wide)
    pack_le = struct.Struct(f"<{count}H").pack if swapped else None

    def decode(words: Sequence[int]) -> list[Value]:
        be = pack_be(*words) if pack_be is not None else b""
        le = pack_le(*words) if pack_le is not None else b""
        return [d(words, be, le) for d in decoders]

    return decode


def _is_plain_word(p: PointConfig) -> bool:
    """A register whose value is the word itself."""
    return (
        p.table not in BIT_TABLES
        and p.type == "uint16"
        and not _BYTE_SWAP[p.order]
        and p.scale == 1.0
        and p.offset == 0.0
    )


def _point_decoder(p: PointConfig, at: int) -> _PointDecoder:
    if p.table in BIT_TABLES:
        return lambda w, be, le: bool(w[at])
    t = TYPES[p.type]
    if t.kind == "bit":
        bit = p.bit or 0
        return lambda w, be, le: bool((w[at] >> bit) & 1)
    if t.kind == "string":
        end, swap = at + p.length, _BYTE_SWAP[p.order]
        return lambda w, be, le: _decode_string(w[at:end], swap)
    scale, offset = p.scale, p.offset
    scaled = scale != 1.0 or offset != 0.0
    if t.kind == "word":
        # struct's convention: a lower-case format letter is signed (">h" int16, ">H" uint16)
        swap, signed = _BYTE_SWAP[p.order], t.fmt[1].islower()

        def word(w: Sequence[int], be: bytes, le: bytes) -> Value:
            v = w[at]
            if swap:
                v = (v & 0xFF) << 8 | v >> 8
            if signed and v & 0x8000:
                v -= 0x10000
            return float(v) * scale + offset if scaled else v

        return word
    # The four orders are two struct endians over two byte strings: DCBA is ABCD read
    # little-endian, BADC is ABCD with each word's bytes swapped, CDAB is that read little-endian.
    unpack = struct.Struct(("<" if _WORD_SWAP[p.order] else ">") + t.fmt[1]).unpack_from
    off = 2 * at
    if _WORD_SWAP[p.order] != _BYTE_SWAP[p.order]:
        if scaled:
            return lambda w, be, le: float(unpack(le, off)[0]) * scale + offset
        return lambda w, be, le: unpack(le, off)[0]
    if scaled:
        return lambda w, be, le: float(unpack(be, off)[0]) * scale + offset
    return lambda w, be, le: unpack(be, off)[0]


def _decode_string(words: Sequence[int], swap: bool) -> str:
    raw = _to_wire_order(words, "BADC" if swap else "ABCD")
    return raw.split(b"\x00", 1)[0].decode("ascii", errors="replace").rstrip()


def encode_point(p: PointConfig, value: Value) -> list[int]:
    """Registers (or one bit) that make `decode_point` return `value`; inverse of the scaling."""
    t = TYPES[p.type]
    if p.table in BIT_TABLES or t.kind == "bit":
        return [1 if value else 0]
    if t.kind == "string":
        raw = str(value).encode("ascii")[: p.length * 2].ljust(p.length * 2, b"\x00")
        return _from_wire_order(raw, "BADC" if _BYTE_SWAP[p.order] else "ABCD")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{p.id}: expected a number, got {type(value).__name__}")
    raw_value: float = value
    if p.scale != 1.0 or p.offset != 0.0:  # unscaled integers stay exact up to 64 bits
        raw_value = (float(value) - p.offset) / p.scale
    if t.fmt[1] not in "fd":  # an integer type: struct refuses a float for it
        raw_value = round(raw_value)
    return _from_wire_order(struct.pack(t.fmt, raw_value), p.order)


def _from_wire_order(raw: bytes, order: str) -> list[int]:
    if _BYTE_SWAP[order]:
        raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if _WORD_SWAP[order] else words
