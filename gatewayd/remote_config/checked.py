"""A configuration document validated once: a push, a stored candidate or the last good one.

Invariants:
- `Checked.parse(stored)` is the one parse of a document; whatever follows (the push rules, the
  candidate, its verdict and health deadline, the commit, a rollback to it, the daemon's start)
  uses `cfg` and never parses `stored.document` again;
- a Checked exists only for a document the schema accepted: building one raises ConfigError
  otherwise; `cfg` is what that document parsed to, nothing overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.config import GatewayConfig, load_document

from .store import Stored


@dataclass(frozen=True)
class Checked:
    stored: Stored
    cfg: GatewayConfig

    @classmethod
    def parse(cls, stored: Stored) -> Checked:
        return cls(stored, load_document(stored.document))

    @property
    def version(self) -> int:
        return self.stored.version

    @property
    def digest(self) -> str:
        return self.stored.digest


__all__ = ["Checked"]
