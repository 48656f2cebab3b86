"""Canonical stored form of a Record: a compact JSON object body without the id.

The uplink's JSON encoder splices the id in front of the stored text, so a backlog drains without
decoding and re-encoding every record.
"""

from __future__ import annotations

import json

from gatewayd.reading import Lane, Quality, Record

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_body(r: Record) -> str:
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
