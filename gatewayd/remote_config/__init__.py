"""Remote configuration and commands: versioned pushes applied live, rolled back when unhealthy.

Invariants:
- a push is validated by the same schema as the local file before anything changes;
- a version at or below the highest one ever tried is refused (stale or replayed), except a
  document identical to the applied one, which is reported as applied again (idempotent);
- a candidate is kept only if the gateway is healthy within the deadline; otherwise the last known
  good configuration is re-applied; the buffer and its records are never touched;
- every file write is atomic, and a candidate that was being applied when the process died is
  retried once at the next start and rolled back after that.
"""

from .commands import CommandHandler
from .document import PushRejected, decode_push
from .manager import ConfigManager, Outcome
from .store import ConfigStore

__all__ = [
    "CommandHandler",
    "ConfigManager",
    "ConfigStore",
    "Outcome",
    "PushRejected",
    "decode_push",
]
