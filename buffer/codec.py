"""Canonical stored form of a Record: a compact JSON object body without the id.

The uplink's JSON encoder splices the id in front of the stored text, so a backlog drains without
decoding and re-encoding every record.

Encoding runs once per reading on the field side, so the common record (telemetry, no reason, no
subfolder, a number/bool/None value) is formatted directly, with each point's quoted name cached;
the output is byte-for-byte what the general json path gives (tests/buffer/test_buffer_codec.py).
"""

from __future__ import annotations

import json

from gatewayd.reading import Lane, Quality, Record

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


_POINT_CACHE_MAX = 65536  # point names come from the configuration: a few thousand at most
_points: dict[str, str] = {}
_QUALITY = {q: f',"quality":"{q.value}"}}' for q in Quality}
_INF = float("inf")


def encode_body(r: Record) -> str:
    v = r.value
    t = type(v)
    if t is float:
        if v != v or v == _INF or v == -_INF:
            return _encode_general(r)
        text = float.__repr__(v)  # what json.dumps writes for a finite float
    elif t is int:
        text = int.__repr__(v)
    elif t is bool:
        text = "true" if v else "false"
    elif v is None:
        text = "null"
    else:
        return _encode_general(r)
    if r.reason is not None or r.lane is not Lane.TELEMETRY or r.subfolder is not None:
        return _encode_general(r)
    point = _points.get(r.point)
    if point is None:
        point = _dumps(r.point)
        if len(_points) < _POINT_CACHE_MAX:
            _points[r.point] = point
    return f'{{"point":{point},"ts":{r.ts_ms},"value":{text}{_QUALITY[r.quality]}'


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
