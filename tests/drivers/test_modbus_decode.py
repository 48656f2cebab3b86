"""The driver's decoder against the simulator's independent encoder, for every type and order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_env import VALUES

from gatewayd.config import PointConfig
from gatewayd.drivers.modbus import decode_point, encode_point
from gatewayd.drivers.modbus.decode import request_decoder
from gatewayd_sim.modbus import to_words

ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


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


_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


@settings(max_examples=400)
@given(data=st.data(), dtype=st.sampled_from(list(_RANGES)), order=st.sampled_from(ORDERS))
def test_integers_round_trip_through_the_simulator_encoding(
    data: st.DataObject, dtype: str, order: str
) -> None:
    value = data.draw(st.integers(*_RANGES[dtype]))
    p = PointConfig(id="x", table="holding", address=0, type=dtype, order=order)  # type: ignore[arg-type]
    assert decode_point(p, to_words(value, dtype, order)) == value


def test_rtu_crc_matches_the_spec_example_and_the_simulator() -> None:
    from gatewayd.drivers.modbus.rtu import crc16
    from gatewayd_sim.modbus.rtu import crc16 as sim_crc16

    frame = bytes.fromhex("010300000001")  # read 1 holding register at 0 from unit 1
    assert crc16(frame) == bytes.fromhex("840a") == sim_crc16(frame)
    for n in range(1, 40):
        assert crc16(bytes(range(n))) == sim_crc16(bytes(range(n)))


@settings(max_examples=200)
@given(
    layout=st.lists(
        st.tuples(
            st.sampled_from(list(VALUES)),
            st.sampled_from(ORDERS),
            st.booleans(),  # scaled
            st.integers(0, 3),  # gap before the point
        ),
        min_size=1,
        max_size=12,
    )
)
def test_a_planned_request_decodes_every_point_at_its_offset(
    layout: list[tuple[str, str, bool, int]],
) -> None:
    words: list[int] = []
    points, expect = [], []
    for i, (dtype, order, scaled, gap) in enumerate(layout):
        words += [0xFFFF] * gap
        scale, offset = (0.5, -3.0) if scaled else (1.0, 0.0)
        points.append(
            PointConfig(
                id=f"p{i}",
                table="holding",
                address=100 + len(words),
                type=dtype,  # type: ignore[arg-type]
                order=order,  # type: ignore[arg-type]
                scale=scale,
                offset=offset,
            )
        )
        words += to_words(VALUES[dtype], dtype, order)
        expect.append(float(VALUES[dtype]) * 0.5 - 3.0 if scaled else VALUES[dtype])
    assert request_decoder(points, 100, len(words))(words) == expect
