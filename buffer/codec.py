"""Canonical stored form of a Record: a compact JSON object body without the id.

The uplink's JSON encoder splices the id in front of the stored text, so a backlog drains without
decoding and re-encoding every record.

Encoding runs once per reading on the field side, so the common record (telemetry, no reason, no
subfolder, a number/bool/None value) is formatted directly, with each point's quoted name cached
(`encode_bodies`: a poll's records in one loop, the stamp's text made once per poll); the output
is byte-for-byte what the general json path gives (tests/buffer/test_buffer_codec.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gatewayd.reading import Lane, Quality, Record

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


_POINT_CACHE_MAX = 65536  # point names come from the configuration: a few thousand at most
_heads: dict[str, str] = {}  # point -> '{"point":"<point, quoted>"'
_QUALITY = {q: f',"quality":"{q.value}"}}' for q in Quality}
_INF = float("inf")
_TELEMETRY = Lane.TELEMETRY


def _head(point: str) -> str:
    head = _heads.get(point)
    if head is None:
        head = '{"point":' + _dumps(point)
        if len(_heads) < _POINT_CACHE_MAX:
            _heads[point] = head
    return head


def _value_text(v: object) -> str | None:
    """The JSON text of a common value (finite number, bool, None); None for the others."""
    t = type(v)
    if t is float:
        if v != v or v == _INF or v == -_INF:
            return None
        return float.__repr__(v)  # what json.dumps writes
    if t is int:
        return int.__repr__(v)
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    return None


def encode_body(r: Record) -> str:
    """One record's stored text (tests and tools; the Store encodes a poll at once)."""
    return encode_bodies((r,))[0]


def encode_bodies(records: Sequence[Record]) -> list[str]:
    """Each record's stored text, the common one formatted inline, and the stamp's text made
    once per run of equal stamps (a poll's readings share one)."""
    out: list[str] = []
    append = out.append
    heads, quality = _heads, _QUALITY
    last_ts: object = None
    ts_text = ""
    for r in records:
        v = r.value
        t = type(v)
        text: str | None
        if t is int:
            text = int.__repr__(v)
        elif t is float and v == v and v != _INF and v != -_INF:
            text = float.__repr__(v)
        else:
            text = _value_text(v)
        if (
            text is None
            or r.reason is not None
            or r.lane is not _TELEMETRY
            or r.subfolder is not None
        ):
            append(_encode_general(r))
            continue
        ts = r.ts_ms
        if ts != last_ts or type(ts) is not int:
            last_ts = ts
            ts_text = f',"ts":{ts},"value":'
        head = heads.get(r.point) or _head(r.point)
        append(f"{head}{ts_text}{text}{quality[r.quality]}")
    return out


def _encode_general(r: Record) -> str:
    d: dict[str, object] = {
        "point": r.point,
        "ts": r.ts_ms,
        "value": r.value,
        "quality": str(r.quality),
    }
    if r.reason is not None:
        d["reason"] = r.reason
    if r.lane is not Lane.TELEMETRY:
        d["lane"] = r.lane.name.lower()
    if r.subfolder is not None:
        d["subfolder"] = r.subfolder
    try:
        return _dumps(d)
    except ValueError:  # NaN or infinity is not JSON: keep the reading, flag it
        d["value"] = None
        d["quality"] = str(Quality.BAD)
        d["reason"] = "not_finite"
        return _dumps(d)


def decode_body(body: str, lane: int) -> Record:
    d = json.loads(body)
    return Record(
        point=d["point"],
        ts_ms=d["ts"],
        value=d["value"],
        quality=Quality(d["quality"]),
        reason=d.get("reason"),
        lane=Lane(lane),
        subfolder=d.get("subfolder"),
    )
