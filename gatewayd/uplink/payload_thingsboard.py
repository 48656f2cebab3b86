"""ThingsBoard's gateway telemetry: a take of buffer entries as one `v1/gateway/telemetry` payload.

    {"plc": [{"ts": 1764000000000,
              "values": {"flow_temp": 61.5, "pressure": 2.1,
                         "_id": {"flow_temp": 101, "pressure": 102}}}]}

The field device is the point's part before the `/` (`plc/flow_temp` -> device "plc", key
"flow_temp"); a record whose point has no `/` (device_down and device_up events, point = the
device) is keyed by its reason. Records of one device and one timestamp share an entry, in the
order taken; a key already in that entry (the same point twice at one ts) opens a new one.

Stable ids: `_id` maps each key of the entry to its record's buffer id, so a re-send after a
crash carries the same ids and a consumer (a rule chain, an export) can drop what it has seen;
ThingsBoard itself overwrites a time series value at the same (device, key, ts), so a re-send
changes nothing in its database. A record that is not good adds its quality under `_quality`,
one with a reason its reason under `_reason` (each a map key -> text). A null value is left out
of `values` (ThingsBoard stores no null); its id and quality are still there. Point ids start
with a letter or digit (config/parse.py), so a key that starts with `_` is always ours.

Invariant: every entry `Buffer.take` hands out encodes, and the result is strict JSON. `take`
guarantees only a JSON object whose first member is "point" and that has no "id" (payload.py),
so nothing else is assumed: a non-string point is turned into text, a missing or non-integer
ts makes an entry without `ts` (ThingsBoard stamps it on arrival), a NaN or infinity that a
body could hold becomes null.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gatewayd.buffer import Entry

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _null(_constant: str) -> None:
    return None


def encode_thingsboard(entries: Sequence[Entry]) -> bytes:
    """One gateway telemetry message for `entries` (see the module docstring)."""
    out: dict[str, list[dict[str, Any]]] = {}
    open_: dict[tuple[str, int | None], dict[str, Any]] = {}  # (device, ts) -> its entry's values
    loads = json.loads
    for e in entries:
        r = loads(e.body, parse_constant=_null)
        point = r["point"]
        if type(point) is not str:
            point = _dumps(point)
        device, slash, key = point.partition("/")
        reason = r.get("reason")
        if not slash:
            key = reason if isinstance(reason, str) and reason else "value"
        ts = r.get("ts")
        if type(ts) is not int:
            ts = None
        values = open_.get((device, ts))
        if values is None or key in values["_id"]:
            values = {"_id": {}}
            out.setdefault(device, []).append(
                values if ts is None else {"ts": ts, "values": values}
            )
            open_[(device, ts)] = values
        value = r.get("value")
        if value is not None:
            values[key] = value
        values["_id"][key] = e.id
        quality = r.get("quality", "good")
        if quality != "good":
            values.setdefault("_quality", {})[key] = quality
        if reason is not None and slash:
            values.setdefault("_reason", {})[key] = reason
    return _dumps(out).encode()
