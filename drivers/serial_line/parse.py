"""One text line to named fields, for each line format. A line that cannot be trusted raises
`LineError` with a reason ("checksum", "unparsable"); the driver drops and counts it.

Field names: NMEA `<sentence>.<name>` (GGA.lat, RMC.speed_kn; any other sentence by position,
`VTG.1`); key=value lines by key; CSV by 0-based column number ("2"); regex by group name.
"""

from __future__ import annotations

import csv
import re
from functools import reduce

_NMEA = re.compile(r"^[$!](?P<body>[A-Z0-9]{3,}[^*]*)\*(?P<sum>[0-9A-Fa-f]{2})$")
_NAMES = {
    "GGA": ("time", "lat", "lat_dir", "lon", "lon_dir", "fix", "sats", "hdop", "alt"),
    "RMC": ("time", "status", "lat", "lat_dir", "lon", "lon_dir", "speed_kn", "course", "date"),
}
_KV = re.compile(r"([A-Za-z_][\w.-]*)\s*[=:]\s*([^\s,;]+)")


class LineError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_line(
    line: str, fmt: str, regex: re.Pattern[str] | None = None, delimiter: str = ","
) -> dict[str, str]:
    if fmt == "nmea":
        return parse_nmea(line)
    if fmt == "kv":
        fields = dict(_KV.findall(line))
    elif fmt == "csv":
        row = next(csv.reader([line], delimiter=delimiter), [])
        fields = {str(i): v.strip() for i, v in enumerate(row)}
    else:
        m = regex.search(line) if regex is not None else None
        fields = {k: v for k, v in (m.groupdict() if m else {}).items() if v is not None}
    if not fields:
        raise LineError("unparsable")
    return fields


def parse_nmea(line: str) -> dict[str, str]:
    m = _NMEA.match(line)
    if m is None:
        raise LineError("unparsable")
    body = m["body"]
    if reduce(lambda a, c: a ^ ord(c), body, 0) != int(m["sum"], 16):
        raise LineError("checksum")
    parts = body.split(",")
    kind = parts[0][2:] if len(parts[0]) == 5 else parts[0]  # drop the talker (GP, GN, ...)
    values = parts[1:]
    names = _NAMES.get(kind, ())
    out = {f"{kind}.{i + 1}": v for i, v in enumerate(values)}
    out.update({f"{kind}.{n}": v for n, v in zip(names, values, strict=False)})
    for axis in ("lat", "lon"):
        raw, hemi = out.get(f"{kind}.{axis}"), out.get(f"{kind}.{axis}_dir")
        if raw:
            out[f"{kind}.{axis}"] = str(_degrees(raw, hemi or ""))
    return out


def _degrees(raw: str, hemisphere: str) -> float:
    """NMEA's ddmm.mmmm (dddmm.mmmm for longitude) to signed decimal degrees."""
    try:
        v = float(raw)
    except ValueError as exc:
        raise LineError("unparsable") from exc
    deg = int(v // 100)
    value = deg + (v - deg * 100) / 60
    return -value if hemisphere in ("S", "W") else value
