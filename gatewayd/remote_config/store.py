"""On-disk state of remote configuration, under `<state_dir>/config/`.

- `applied.json`: the last known good document (what the gateway starts with);
- `candidate.json`: a document being tried, with how many process starts it has seen;
- `history.json`: the highest version ever tried, the last rollback, and the last outcome
  reported (re-reported after a restart).
Every write is atomic (write, fsync, rename, fsync the directory) and strict JSON. A version that
is not an integer in 0..2**53-1 (a hand edit, or an older gatewayd that let 10**400 through) makes
its file count as absent, so it cannot block pushes or break the metrics across restarts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.files import write_atomic

MAX_VERSION = 2**53 - 1  # config.section.INT_LIMIT


def _version(v: Any) -> int | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_VERSION
    return v if ok else None


# Hex characters of the digest a config outcome carries: enough to tell two documents apart, short
# enough for a state document under AWS's 8 KB shadow limit.
OUTCOME_DIGEST_CHARS = 16


def digest(doc: dict[str, Any]) -> str:
    """Content identity of a document, independent of key order and formatting."""
    return hashlib.sha256(
        json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    ).hexdigest()


@dataclass(frozen=True)
class Stored:
    version: int
    document: dict[str, Any]
    starts: int = 0

    @property
    def digest(self) -> str:
        return digest(self.document)


class ConfigStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / name).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn file cannot happen with atomic writes; a hand-edited one can: ignore it.
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        write_atomic(self.dir / name, json.dumps(data, sort_keys=True, allow_nan=False))

    def _stored(self, name: str) -> Stored | None:
        d = self._read(name) or {}
        version, doc, starts = _version(d.get("version")), d.get("document"), d.get("starts", 0)
        if version is None or not isinstance(doc, dict) or not isinstance(starts, int):
            return None
        return Stored(version, doc, starts)

    def applied(self) -> Stored | None:
        return self._stored("applied.json")

    def candidate(self) -> Stored | None:
        return self._stored("candidate.json")

    def save_candidate(self, c: Stored) -> None:
        self._write(
            "candidate.json", {"version": c.version, "document": c.document, "starts": c.starts}
        )
        self.note_tried(c.version)

    def commit(self, c: Stored) -> None:
        self._write("applied.json", {"version": c.version, "document": c.document})
        self.drop_candidate()

    def drop_candidate(self) -> None:
        (self.dir / "candidate.json").unlink(missing_ok=True)

    def highest_tried(self) -> int:
        d = self._read("history.json") or {}
        v = _version(d.get("highest_tried"))
        return -1 if v is None else v

    def note_tried(self, version: int) -> None:
        d = self._read("history.json") or {}
        if version > self.highest_tried():
            d["highest_tried"] = version
            self._write("history.json", d)

    def note_rollback(self, c: Stored, reason: str) -> None:
        d = self._read("history.json") or {}
        d["last_rollback"] = {"version": c.version, "digest": c.digest, "reason": reason}
        self._write("history.json", d)

    def is_last_rollback(self, version: int, doc_digest: str) -> bool:
        """The very document that was rolled back last (the broker re-delivers it, retained)."""
        rb = (self._read("history.json") or {}).get("last_rollback") or {}
        return bool(rb.get("version") == version and rb.get("digest") == doc_digest)

    def last_outcome(self) -> dict[str, Any] | None:
        """The last reported outcome, kept so a restart still tells the cloud what happened."""
        out = (self._read("history.json") or {}).get("last_outcome")
        return out if isinstance(out, dict) else None

    def note_outcome(self, outcome: dict[str, Any]) -> None:
        d = self._read("history.json") or {}
        d["last_outcome"] = outcome
        self._write("history.json", d)
