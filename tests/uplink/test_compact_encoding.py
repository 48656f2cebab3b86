"""The compact encoding round-trips: the cloud's decoder gives back every record the JSON encoding
would carry (id, point, ts, value, quality and the rest), in order, plain and zlib-compressed."""

from __future__ import annotations

import json
import math
import zlib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gatewayd.buffer import Entry
from gatewayd.buffer.codec import encode_body
from gatewayd.reading import Lane, Quality, Record
from gatewayd.uplink import encode_json, load_encoder
from gatewayd.uplink.encoders.compact import ZLIB_MIN_BYTES, encode, encode_zlib
from gatewayd_sim.cloud.compact import decode

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),  # NaN and infinity: stored as a bad reading, which must round-trip too
    st.text(max_size=8),
)
points = st.builds(
    lambda dev, name: f"{dev}/{name}" if dev is not None else name,
    st.one_of(st.none(), st.sampled_from(["dev0", "dev1", "a/b", ""])),
    st.one_of(st.sampled_from(["r0", "r1", "temp", "", "ü/x"]), st.text(max_size=6)),
)
records = st.builds(
    Record,
    point=points,
    ts_ms=st.sampled_from([1_700_000_000_000, 1_700_000_000_100, 0, 2**41]),
    value=values,
    quality=st.sampled_from(list(Quality)),
    reason=st.one_of(st.none(), st.sampled_from(["driver_error", "clock_unsynced"])),
    lane=st.sampled_from(list(Lane)),
    subfolder=st.one_of(st.none(), st.sampled_from(["fast", "slow"])),
)


@st.composite
def entry_lists(draw: st.DrawFn) -> list[Entry]:
    recs = draw(st.lists(records, max_size=60))
    n = len(recs)
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 1000]), min_size=n, max_size=n))
    first = draw(st.sampled_from([1, (7 << 40) + 1, 2**53]))
    out, rid = [], first
    for r, gap in zip(recs, gaps, strict=True):
        out.append(Entry(rid, int(r.lane), encode_body(r)))
        rid += gap
    return out


def _same(a: object, b: object) -> bool:
    # -0.0 == 0.0 but a float must stay a float; NaN never reaches JSON (stored as null, bad).
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(entry_lists())
@example(  # found by hypothesis: "r0" then "/r0" went into one group, the second came back "r0"
    [
        Entry(i, 2, encode_body(Record(p, 1_700_000_000_000, None)))
        for i, p in ((1, "r0"), (2, "/r0"))
    ]
)
def test_decode_of_compact_gives_back_what_json_carries(entries: list[Entry]) -> None:
    want = json.loads(encode_json(entries))
    for payload in (encode(entries), encode_zlib(entries)):
        got = decode(payload)
        assert [r["id"] for r in got] == [e.id for e in entries]
        assert got == want
        for g, w in zip(got, want, strict=True):
            assert set(g) == set(w)
            assert all(_same(g[k], w[k]) for k in w)


def test_a_poll_is_one_group_and_a_backlog_compresses() -> None:
    ts = 1_700_000_000_000
    poll = [
        Entry((3 << 40) + 1 + i, int(Lane.TELEMETRY), encode_body(Record(f"dev0/r{i}", ts, i)))
        for i in range(1000)
    ]
    doc = json.loads(encode(poll))
    assert doc["base"] == poll[0].id and len(doc["groups"]) == 1
    plain, packed, js = len(encode(poll)), len(encode_zlib(poll)), len(encode_json(poll))
    assert plain * 4 < js  # about 10 bytes a reading against about 60
    assert packed >= ZLIB_MIN_BYTES or packed < plain
    assert zlib.decompress(encode_zlib(poll)) == encode(poll)
    small = poll[:3]
    assert encode_zlib(small) == encode(small)  # too small for zlib to pay


def test_the_encoders_are_registered_by_name() -> None:
    assert load_encoder("compact") is encode
    assert load_encoder("compact_zlib") is encode_zlib
