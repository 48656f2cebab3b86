"""The compact encoding: a poll's records grouped by device and timestamp, ids as base + offsets.

`[uplink] encoder = "compact"` (or "compact_zlib": the same, zlib-compressed when the message is
large enough for it to pay, as backlog drains are). One message is a JSON object:

    {"compact":1,"base":B,"groups":[[OFF,TS,"dev0/",["r0","r1",...],[V0,V1,...],{...}],...]}

A group holds records with consecutive ids (B + OFF, B + OFF + 1, ...), one timestamp, one point
prefix (the point's name up to its last "/", the device) and the same other fields; the last
element, present only when not empty, holds those other fields as the JSON encoding writes them
(quality when not "good", reason, lane, subfolder). A compressed message is the zlib stream of
that object (it starts with 0x78; the plain one with "{").

Invariants:
- every record's stable id, point, ts, value and every other field of its stored body come back
  from `gatewayd_sim.cloud.compact.decode` (tests/uplink/test_compact_encoding.py);
- the order of records is kept: a group never reorders, a change of any key starts a new one;
- the bodies are parsed in one `json.loads` per message, so the cost is one C pass plus a short
  Python loop per record.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

from gatewayd.buffer import Entry

VERSION = 1
ZLIB_MIN_BYTES = 2048  # below this zlib's header and dictionary warm-up eat most of the gain
ZLIB_LEVEL = 6

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(entries: Sequence[Entry]) -> bytes:
    """The compact JSON object of these entries (see the module docstring)."""
    return _dumps(_message(entries)).encode()


def encode_zlib(entries: Sequence[Entry]) -> bytes:
    """`encode`, zlib-compressed when the result is at least ZLIB_MIN_BYTES."""
    raw = encode(entries)
    return zlib.compress(raw, ZLIB_LEVEL) if len(raw) >= ZLIB_MIN_BYTES else raw


def _message(entries: Sequence[Entry]) -> dict[str, Any]:
    if not entries:
        return {"compact": VERSION, "base": 0, "groups": []}
    bodies: list[dict[str, Any]] = json.loads("[" + ",".join([e.body for e in entries]) + "]")
    base = entries[0].id
    groups: list[list[Any]] = []
    names: list[str] = []
    values: list[Any] = []
    key: tuple[Any, ...] | None = None
    next_id = -1
    for e, d in zip(entries, bodies, strict=True):
        prefix, slash, name = d.pop("point").rpartition("/")
        head = prefix + slash  # "r0" and "/r0" have the same prefix "", not the same head
        ts = d.pop("ts")
        value = d.pop("value")
        if d.get("quality") == "good":
            del d["quality"]
        rest = _dumps(d) if d else ""
        k = (head, ts, rest)
        if k != key or e.id != next_id:
            names, values = [], []
            group: list[Any] = [e.id - base, ts, head, names, values]
            if d:
                group.append(d)
            groups.append(group)
            key = k
        names.append(name)
        values.append(value)
        next_id = e.id + 1
    return {"compact": VERSION, "base": base, "groups": groups}
