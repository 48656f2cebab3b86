"""The cloud side of gatewayd's compact encoding (gatewayd/uplink/encoders/compact.py).

`decode(payload)` gives back the records as the JSON encoding would carry them: a list of dicts
with "id", "point", "ts", "value", "quality" and whatever other fields the record had (reason,
lane, subfolder). It takes a plain JSON array too, so a subscriber need not know the encoder.

Invariant: needs only the standard library (a cloud function can vendor this one file).
"""

from __future__ import annotations

import json
import zlib
from typing import Any


def decode(payload: bytes) -> list[dict[str, Any]]:
    if payload[:1] == b"\x78":  # zlib stream (compact_zlib); JSON starts with "{" or "["
        payload = zlib.decompress(payload)
    doc = json.loads(payload)
    if isinstance(doc, list):  # the default JSON encoding
        return doc
    if doc.get("compact") != 1:
        raise ValueError(f"not a compact message of version 1: {str(doc)[:80]!r}")
    base = doc["base"]
    out: list[dict[str, Any]] = []
    for group in doc["groups"]:
        off, ts, prefix, names, values = group[:5]
        rest = group[5] if len(group) > 5 else {}
        first = base + off
        for i, (name, value) in enumerate(zip(names, values, strict=True)):
            rec = {"id": first + i, "point": prefix + name, "ts": ts, "value": value}
            rec["quality"] = rest.get("quality", "good")
            rec.update({k: v for k, v in rest.items() if k != "quality"})
            out.append(rec)
    return out
