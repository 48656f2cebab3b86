"""The driver's decoder against the simulator's independent encoder, for every type and order."""

from __future__ import annotations

import pytest
from gatewayd.config import PointConfig
from gatewayd.drivers.modbus import decode_point, encode_point
from gatewayd_sim.modbus import to_words

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]
VALUES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -2_000_000_001,
    "uint32": 4_000_000_001,
    "int64": -9_000_000_000_000_000_001,
    "uint64": 18_000_000_000_000_000_001,
    "float32": 3.25,
    "float64": -1234.5678,
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", list(VALUES))
def test_every_type_and_order_decodes_exactly(dtype: str, order: str) -> None:
    p = PointConfig(id="x", table="holding", address=0, type=dtype, order=order)  # type: ignore[arg-type]
    words = to_words(VALUES[dtype], dtype, order)
    assert decode_point(p, words) == VALUES[dtype]
    assert encode_point(p, VALUES[dtype]) == words


def test_word_order_is_what_plcs_send() -> None:
    # 0x12345678 as uint32: ABCD sends 0x1234 0x5678, CDAB 0x5678 0x1234,
    # BADC 0x3412 0x7856, DCBA 0x7856 0x3412.
    assert to_words(0x12345678, "uint32", "ABCD") == [0x1234, 0x5678]
    assert to_words(0x12345678, "uint32", "CDAB") == [0x5678, 0x1234]
    assert to_words(0x12345678, "uint32", "BADC") == [0x3412, 0x7856]
    assert to_words(0x12345678, "uint32", "DCBA") == [0x7856, 0x3412]


def test_scale_offset_and_bit() -> None:
    p = PointConfig(id="t", table="holding", address=0, type="int16", scale=0.1, offset=-40)
    assert decode_point(p, [0xFFF6]) == pytest.approx(-41.0)  # -10 * 0.1 - 40
    bit = PointConfig(id="b", table="holding", address=0, type="bool", bit=3)
    assert decode_point(bit, [0b1000]) is True
    assert decode_point(bit, [0b0111]) is False


def test_string_decodes_and_stops_at_nul() -> None:
    p = PointConfig(id="s", table="holding", address=0, type="string", length=4)
    words = encode_point(p, "PUMP1")
    assert len(words) == 4
    assert decode_point(p, words) == "PUMP1"
