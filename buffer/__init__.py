"""Store-and-forward outbox: one SQLite file (WAL), ack-to-delete, priority lanes, bounded.

Invariants:
- `append` returns only after its records are committed (durable by the `sync` policy);
- a record leaves the file only through `ack` (after the broker's PUBACK) or a counted eviction;
- ids never repeat on a gateway, also across restarts and re-creation of the file.
"""

from .buffer import Buffer
from .lifecycle import BufferOpenError
from .store import Entry, Stats, Store

__all__ = ["Buffer", "BufferOpenError", "Entry", "Stats", "Store"]
