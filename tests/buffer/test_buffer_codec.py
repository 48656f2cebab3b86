"""The stored JSON body: the fast path writes exactly what the general json path writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gatewayd.buffer.codec import _encode_general, decode_body, encode_bodies, encode_body
from gatewayd.reading import Lane, Quality, Record

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=20),
)
records = st.builds(
    Record,
    point=st.text(min_size=1, max_size=30),
    ts_ms=st.integers(min_value=0, max_value=2**45),
    value=values,
    quality=st.sampled_from(Quality),
    reason=st.one_of(st.none(), st.text(max_size=10)),
    lane=st.sampled_from(Lane),
    subfolder=st.one_of(st.none(), st.text(max_size=10)),
)


@given(records)
def test_fast_encoding_equals_the_general_json_encoding(r: Record) -> None:
    body = encode_body(r)
    assert body == _encode_general(r)
    back = decode_body(body, int(r.lane))
    if isinstance(r.value, float) and (r.value != r.value or abs(r.value) == float("inf")):
        assert back.value is None and back.quality is Quality.BAD and back.reason == "not_finite"
    else:
        assert back == r
    assert json.loads(body)["point"] == r.point


@given(st.lists(records, max_size=8), st.integers(min_value=0, max_value=2**45))
def test_a_polls_bodies_in_one_loop_equal_one_by_one(rs: list[Record], ts: int) -> None:
    shared = [r._replace(ts_ms=ts) for r in rs]  # a poll: one stamp
    for batch in (rs, shared, rs + shared):
        assert encode_bodies(batch) == [_encode_general(r) for r in batch]
