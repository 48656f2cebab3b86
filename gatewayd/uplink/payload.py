"""Message encoders: a batch of buffer entries in, one MQTT payload out.

The default is a JSON array of records, each with its stable id first. The buffer stores each
record's JSON body; the id is spliced in front, so nothing is decoded on the way out. Other
formats plug in through the entry point group "gatewayd.encoders" (name -> callable taking a
sequence of `Entry` and returning bytes); "thingsboard" is built in (payload_thingsboard.py).

Invariant: `encode_json` of entries from `Buffer.take` always parses. It is built so: `take`
hands out only bodies that are valid UTF-8 and a JSON object whose first member is "point" and
that has no "id" member (the store checks each one inside SQLite and sets the others aside,
counted as damaged), and `{"id":N,` + such a body without its `{` is again one JSON object, whose
only id is N. Nothing is checked here, so
the cost stays in the one pass SQLite makes over rows it has just read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from gatewayd.buffer import Entry
from gatewayd.config import ConfigError

Encoder = Callable[[Sequence[Entry]], bytes]


def encode_json(entries: Sequence[Entry]) -> bytes:
    """A JSON array of the records, each with its id first (see the invariant above)."""
    return ("[" + ",".join([f'{{"id":{e.id},{e.body[1:]}' for e in entries]) + "]").encode()


def load_encoder(
    name: str, place: str = "uplink.encoder", device_name: Callable[[str], str] | None = None
) -> Encoder:
    """`device_name`: a field device's ThingsBoard name (UplinkConfig.field_device_name_of)."""
    if name == "json":
        return encode_json
    if name == "thingsboard":
        from .payload_thingsboard import encode_thingsboard, thingsboard_encoder

        return encode_thingsboard if device_name is None else thingsboard_encoder(device_name)
    eps = entry_points(group="gatewayd.encoders")
    if name not in eps.names:
        raise ConfigError(
            place,
            f"unknown encoder {name!r}",
            f"use 'json' or one of {sorted(eps.names)}, or install the package that provides it",
        )
    enc: Encoder = eps[name].load()
    return enc


def subfolder_of(entry: Entry) -> str | None:
    """The telemetry subfolder a routing rule chose; a cheap substring test skips the rest."""
    if '"subfolder":' not in entry.body:
        return None
    import json

    sub = json.loads(entry.body).get("subfolder")
    return sub if isinstance(sub, str) and sub else None
