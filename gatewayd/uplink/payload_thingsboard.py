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

Device names: the device part as it is, or as `[uplink] field_device_name` names it
(`thingsboard_encoder`), since ThingsBoard names are per tenant.

Invariant: every entry `Buffer.take` hands out encodes, and the result is strict JSON. `take`
guarantees only a JSON object whose first member is "point" and that has no "id" (payload.py),
so nothing else is assumed: a non-string point is turned into text, a missing or non-integer
ts makes an entry without `ts` (ThingsBoard stamps it on arrival), a NaN or infinity that a
body could hold becomes null.

Cost: the common body (codec.py's fast path: a number or bool, good, no reason) is matched by
one regular expression and its value text copied as it is; only the others are decoded. The
output is built as text, so nothing is decoded and encoded again (tests compare it with json).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from gatewayd.buffer import Entry

# payload.Encoder's shape (payload.py imports this module: no import back).
Encoder = Callable[[Sequence[Entry]], bytes]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

# codec.py's fast path, good quality, a number or bool, no escapes in the point: no decoding.
_COMMON = re.compile(
    r'\{"point":"([^"\\/]*)/([^"\\]*)","ts":(-?\d+),'
    r'"value":(-?\d[\d.eE+-]*|true|false),"quality":"good"\}'
)

# One key of an entry: (its value as JSON text or None, id, quality or None, reason or None).
_Part = tuple[str | None, int, str | None, str | None]


def _null(_constant: str) -> None:
    return None


def thingsboard_encoder(device_name: Callable[[str], str]) -> Encoder:
    """The encoder that names each field device `device_name(id)` (UplinkConfig's
    field_device_name_of), each name made once."""
    names: dict[str, str] = {}  # device literal -> its ThingsBoard name, as a literal

    def name_of(literal: str) -> str:
        name = names.get(literal)
        if name is None:
            name = names[literal] = _dumps(device_name(json.loads(literal)))
        return name

    return lambda entries: encode_thingsboard(entries, name_of)


def encode_thingsboard(
    entries: Sequence[Entry], name_of: Callable[[str], str] | None = None
) -> bytes:
    """One gateway telemetry message for `entries` (see the module docstring); `name_of` maps a
    device's JSON literal to its ThingsBoard name's."""
    devices: dict[str, list[tuple[str | None, dict[str, _Part]]]] = {}  # device literal -> entries
    open_: dict[tuple[str, str | None], dict[str, _Part]] = {}  # (device, ts) -> its entry
    match = _COMMON.fullmatch
    for e in entries:
        m = match(e.body)
        if m is not None:
            dev, key, ts, value = m.groups()
            dev, key = f'"{dev}"', f'"{key}"'
            part: _Part = (value, e.id, None, None)
        else:
            dev, key, ts, part = _general(e)
        parts = open_.get((dev, ts))
        if parts is None or key in parts:
            parts = {}
            devices.setdefault(dev, []).append((ts, parts))
            open_[(dev, ts)] = parts
        parts[key] = part
    out = []
    for dev, items in devices.items():
        texts = []
        for ts, parts in items:
            values = [f"{k}:{v}" for k, (v, _, _, _) in parts.items() if v is not None]
            values.append('"_id":{' + ",".join([f"{k}:{p[1]}" for k, p in parts.items()]) + "}")
            for name, i in (("_quality", 2), ("_reason", 3)):
                extra = [f"{k}:{p[i]}" for k, p in parts.items() if p[i] is not None]
                if extra:
                    values.append(f'"{name}":{{' + ",".join(extra) + "}")
            body = "{" + ",".join(values) + "}"
            texts.append(body if ts is None else f'{{"ts":{ts},"values":{body}}}')
        out.append(f"{dev if name_of is None else name_of(dev)}:[" + ",".join(texts) + "]")
    return ("{" + ",".join(out) + "}").encode()


def _general(e: Entry) -> tuple[str, str, str | None, _Part]:
    """Any other body `take` may hand out: decoded, each piece written back as JSON text."""
    r = json.loads(e.body, parse_constant=_null)
    point = r["point"]
    if type(point) is not str:
        point = _dumps(point)
    device, slash, key = point.partition("/")
    reason = r.get("reason")
    if not slash:
        key = reason if isinstance(reason, str) and reason else "value"
    ts = r.get("ts")
    value = r.get("value")
    quality = r.get("quality", "good")
    return (
        _dumps(device),
        _dumps(key),
        str(ts) if type(ts) is int else None,
        (
            None if value is None else _dumps(value),
            e.id,
            None if quality == "good" else _dumps(quality),
            _dumps(reason) if reason is not None and slash else None,
        ),
    )
