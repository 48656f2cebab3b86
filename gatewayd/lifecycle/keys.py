"""Device-key rotation: a new key pair made on the box, tried, and kept only once the broker
takes it.

Layout, in the state directory (the config directory, with the key install.sh made, is
read-only to the daemon):

    <state>/keys/<key id>.key   private keys made here, mode 0600, never sent anywhere
    <state>/keys/keys.json      which key is current (none: the configured [uplink.auth] key),
                                the candidate and its deadline, the last rotation's outcome

`rotate_key` makes the candidate and reports its public key (and key id: the first 16 hex digits
of the SHA-256 of its DER public key) on the state topic, for the operator to register. The
candidate is tried at `commit_key` (a reconnect at once), and at every token refresh until its
deadline; the first CONNECT it succeeds with makes it current. A CONNECT it is refused with goes
back to the current key at once (the session re-mints, see uplink/session.py) and is reported.
Past the deadline an untried or refused candidate is deleted and the expiry reported.

Invariants: the current key works until the candidate succeeded (a reconnect to switch keys is a
token refresh: in-flight messages drain first, nothing is lost); a private key is never logged,
put in the state document or sent; keys.json is replaced atomically after the key files exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gatewayd.uplink.device_jwt import generate_key, load_private_key

log = logging.getLogger("gatewayd.lifecycle")

DEFAULT_DEADLINE_S = 7 * 24 * 3600.0


class RotationRefused(Exception):
    """A rotate_key/commit_key that cannot be done now; the text says why and what to do."""


def key_id(public_pem: bytes) -> str:
    from cryptography.hazmat.primitives import serialization

    pub = serialization.load_pem_public_key(public_pem)
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


class KeyRing:
    """Which key signs the next token; persists across restarts and uplink restarts."""

    def __init__(
        self,
        folder: Path,
        base_key: Path,
        base_algorithm: str,
        base_key_id: str | None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.path = folder / "keys.json"
        self.base: dict[str, Any] = {
            "file": str(base_key),
            "algorithm": base_algorithm,
            "key_id": base_key_id,
        }
        self.wall_clock = wall_clock
        self.on_change: Callable[[], None] = lambda: None  # the state document changed
        self.trial_requested = False  # commit_key: try the candidate at the next CONNECT
        self.trying = False  # the last token was signed by the candidate
        doc: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(self.path.read_text())
        self.current: dict[str, Any] | None = doc.get("current")
        self.candidate: dict[str, Any] | None = doc.get("candidate")
        self.outcome: dict[str, Any] | None = doc.get("outcome")
        self._keys: dict[str, Any] = {}

    # -- signing -------------------------------------------------------------------------------

    def signer(self, at_refresh: bool) -> tuple[Any, str, str | None]:
        """(private key, algorithm, key id) for the next token; `at_refresh`: this CONNECT is a
        token refresh (or the first), when a pending candidate is tried."""
        self._expire()
        c = self.candidate
        self.trying = c is not None and (self.trial_requested or at_refresh)
        entry = c if self.trying and c is not None else (self.current or self.base)
        return self._load(entry), entry["algorithm"], entry.get("key_id")

    def check_current(self) -> None:
        """Load the current key if it exists: an unsafe or unusable one raises now."""
        entry = self.current or self.base
        if Path(entry["file"]).exists():
            self._load(entry)

    def current_key_id(self) -> str | None:
        return (self.current or self.base).get("key_id")

    def connected(self) -> None:
        """The broker accepted the last CONNECT."""
        if not self.trying or self.candidate is None:
            return
        old, new = self.current, self.candidate
        self.current, self.candidate = new, None
        self.trying = self.trial_requested = False
        self._set_outcome("committed", new, f"the broker accepted key {new['key_id']}")
        if old is not None:  # a key made here before; the configured one is never touched
            with contextlib.suppress(OSError):
                Path(old["file"]).unlink()
        log.info("device_key_committed key_id=%s", new["key_id"])

    def refused(self, reason: str) -> None:
        """The broker refused the last CONNECT."""
        if not self.trying or self.candidate is None:
            return
        c = self.candidate
        self.trying = self.trial_requested = False
        back = self.current_key_id() or "configured key"
        self._set_outcome(
            "refused", c, f"the broker refused key {c['key_id']} ({reason}); back on {back}"
        )
        log.warning("device_key_refused key_id=%s reason=%s", c["key_id"], reason)

    def refresh_now(self) -> bool:
        """Whether the session should reconnect now to try the candidate (commit_key)."""
        return self.trial_requested and self.candidate is not None and not self.trying

    # -- commands ------------------------------------------------------------------------------

    def rotate(self, algorithm: str | None, deadline_s: float | None) -> dict[str, Any]:
        alg = algorithm or (self.current or self.base)["algorithm"]
        if alg not in ("ES256", "RS256"):
            raise RotationRefused(f"algorithm: {alg!r} is not ES256 or RS256")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.folder / f".new-{os.getpid()}.key"
        tmp.unlink(missing_ok=True)
        pub = generate_key(tmp, alg)  # 0600, O_EXCL
        kid = key_id(pub)
        path = self.folder / f"{kid}.key"
        os.replace(tmp, path)
        if self.candidate is not None:  # a newer rotation replaces an untried candidate
            with contextlib.suppress(OSError):
                Path(self.candidate["file"]).unlink()
        deadline = self.wall_clock() + (deadline_s or DEFAULT_DEADLINE_S)
        self.candidate = {
            "file": str(path),
            "algorithm": alg,
            "key_id": kid,
            "public_key": pub.decode(),
            "deadline": int(deadline),
        }
        self.trial_requested = self.trying = False
        self._set_outcome("pending", self.candidate, "register the public key, then commit_key")
        log.info("device_key_created key_id=%s algorithm=%s", kid, alg)
        return self.candidate

    def commit(self) -> str:
        if self.candidate is None:
            raise RotationRefused("no new key to commit; send rotate_key first")
        self.trial_requested = True
        self.on_change()
        return str(self.candidate["key_id"])

    # -- state ---------------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        self._expire()  # asked about once a second by the uplink: a deadline shows when it passes
        cur = self.current or self.base
        doc: dict[str, Any] = {"key_id": cur.get("key_id"), "algorithm": cur["algorithm"]}
        if self.candidate is not None:
            c = self.candidate
            doc["candidate"] = {k: c[k] for k in ("key_id", "algorithm", "public_key", "deadline")}
        if self.outcome is not None:
            doc["rotation"] = self.outcome
        return doc

    def _expire(self) -> None:
        c = self.candidate
        if c is not None and self.wall_clock() >= c["deadline"]:
            self.candidate = None
            self.trying = self.trial_requested = False
            with contextlib.suppress(OSError):
                Path(c["file"]).unlink()
            self._set_outcome("expired", c, "not accepted by the broker before its deadline")

    def _set_outcome(self, status: str, entry: dict[str, Any], reason: str) -> None:
        self.outcome = {
            "status": status,
            "key_id": entry["key_id"],
            "reason": reason,
            "ts": int(self.wall_clock() * 1000),
        }
        self._save()
        self.on_change()

    def _save(self) -> None:
        doc = {"current": self.current, "candidate": self.candidate, "outcome": self.outcome}
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name("keys.json.tmp")
        with tmp.open("w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _load(self, entry: dict[str, Any]) -> Any:
        f = entry["file"]
        if f not in self._keys:
            self._keys[f] = load_private_key(f, entry["algorithm"])
        return self._keys[f]


__all__ = ["KeyRing", "RotationRefused", "key_id"]
