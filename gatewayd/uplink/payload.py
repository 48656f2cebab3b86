"""Message encoding: a JSON array of records, each with its stable id first.

The buffer stores each record's JSON body; the id is spliced in front, so nothing is decoded on
the way out.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.buffer import Entry


def encode_json(entries: Sequence[Entry]) -> bytes:
    return ("[" + ",".join(f'{{"id":{e.id},{e.body[1:]}' for e in entries) + "]").encode()
