"""A pushed configuration's life: validate, refuse stale, try as candidate, keep or roll back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gatewayd.config import ConfigError, GatewayConfig, load_document
from gatewayd.metrics import Metrics
from gatewayd.reading import now_ms

from .document import PushRejected, decode_push
from .store import ConfigStore, Stored, digest

log = logging.getLogger("gatewayd.remote_config")

# A candidate that was being tried when the process died gets one more start, then is rolled back.
MAX_STARTS = 2


class Outcome(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class Target(Protocol):
    """What the manager needs from the running gateway."""

    async def reconfigure(self, cfg: GatewayConfig) -> None: ...

    async def wait_healthy(self, deadline_s: float) -> str | None:
        """None once healthy; otherwise, at the deadline, the reason it is not."""
        ...


Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Startup:
    lkg: Stored  # the last known good configuration
    trial: Stored | None  # a candidate to try at start, under the health deadline
    outcome: dict[str, Any] | None  # the outcome to report (restored from disk, or new)
    new_outcome: bool = False  # decided at this start (a rollback), so count it


def startup_config(local: GatewayConfig, local_doc: dict[str, Any], store: ConfigStore) -> Startup:
    """Which configuration to start with."""
    base = Stored(local.version, local_doc)
    applied = store.applied()
    if applied is not None and applied.version >= local.version:
        try:
            load_document(applied.document)
            base = applied
        except ConfigError as exc:  # e.g. written by an older gatewayd with another schema
            log.warning("applied_config_unusable version=%d error=%s", applied.version, exc)
    cand = store.candidate()
    if cand is None or cand.version <= base.version:
        store.drop_candidate()
        return Startup(base, None, store.last_outcome())
    if cand.starts >= MAX_STARTS:
        reason = "the gateway stopped while applying it, twice; rolled back at start"
        store.note_rollback(cand, reason)
        store.drop_candidate()
        log.warning("config_rolled_back version=%d reason=%r", cand.version, reason)
        outcome = _outcome(cand.version, Outcome.ROLLED_BACK, reason)
        store.note_outcome(outcome)
        return Startup(base, None, outcome, new_outcome=True)
    cand = Stored(cand.version, cand.document, cand.starts + 1)
    store.save_candidate(cand)
    return Startup(base, cand, store.last_outcome())


def _outcome(version: int | None, status: Outcome, reason: str = "") -> dict[str, Any]:
    return {"version": version, "status": str(status), "reason": reason, "ts": now_ms()}


class ConfigManager:
    def __init__(
        self,
        target: Target,
        store: ConfigStore,
        current: GatewayConfig,
        lkg: Stored,
        report: Report,
        metrics: Metrics,
        config_dir: Path,
    ) -> None:
        self.target = target
        self.store = store
        self.current = current
        self.lkg = lkg
        self.report = report
        self.metrics = metrics
        self.config_dir = config_dir
        self.last_outcome: dict[str, Any] | None = None
        self._pending: tuple[bytes, bool] | None = None  # (payload, from the local file)
        self._wake = asyncio.Event()
        self._key: Any = None
        self._load_signing_key()

    def _load_signing_key(self) -> None:
        rc = self.current.remote_config
        if not (rc.require_signed and rc.signing_key):
            return
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        path = Path(rc.signing_key)
        path = path if path.is_absolute() else self.config_dir / path
        self._key = load_pem_public_key(path.read_bytes())

    def on_push(self, payload: bytes) -> None:
        """Called from the uplink for every message on the config topic; the newest one wins."""
        self._pending = (payload, False)
        self._wake.set()

    def on_local(self, doc: dict[str, Any]) -> None:
        """SIGHUP: the local file goes through the same path, trusted (no signature needed)."""
        self._pending = (json.dumps(doc).encode(), True)
        self._wake.set()

    async def run(self, trial: Stored | None = None) -> None:
        if trial is not None:
            await self._verdict(trial, time.monotonic())
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is not None:
                try:
                    await self.handle(*pending)
                except Exception:  # a push must never take the manager down
                    log.exception("config_push_failed")

    def _emit(self, version: int | None, status: Outcome, reason: str = "") -> None:
        out = _outcome(version, status, reason)
        self.last_outcome = out
        if status is not Outcome.REJECTED:  # rejections change nothing on disk; keep writes few
            self.store.note_outcome(out)
        self.metrics.inc("config_outcomes", status=str(status))
        log.info("config_%s version=%s reason=%r", status, version, reason)
        self.report(out)

    async def handle(self, payload: bytes, trusted: bool = False) -> Outcome:
        version: int | None = None
        try:
            rc = self.current.remote_config
            doc = decode_push(payload, rc.max_document_bytes, None if trusted else self._key)
            v = doc.get("version")
            version = v if isinstance(v, int) and not isinstance(v, bool) else None
            cfg = load_document(doc)
            self._check_allowed(cfg)
        except (PushRejected, ConfigError) as exc:
            self._emit(version, Outcome.REJECTED, str(exc))
            return Outcome.REJECTED
        if digest(doc) == self.lkg.digest:
            self._emit(cfg.version, Outcome.APPLIED, "identical to the applied configuration")
            return Outcome.APPLIED
        if self.store.is_last_rollback(cfg.version, digest(doc)):
            # The retained push comes again at every reconnect: the rollback stays the answer.
            log.debug("config_replay_ignored version=%d", cfg.version)
            return Outcome.ROLLED_BACK
        highest = max(self.store.highest_tried(), self.lkg.version)
        if cfg.version <= highest:
            self._emit(
                cfg.version,
                Outcome.REJECTED,
                f"version {cfg.version} is not newer than {highest} (stale or replayed); "
                "push a higher version",
            )
            return Outcome.REJECTED
        cand = Stored(cfg.version, doc, starts=1)
        self.store.save_candidate(cand)
        log.info(
            "config_candidate version=%d source=%s",
            cfg.version,
            "local_file" if trusted else "push",
        )
        t0 = time.monotonic()
        try:
            await self.target.reconfigure(cfg)
            self.current = cfg
        except Exception as exc:
            log.exception("config_apply_failed version=%d", cfg.version)
            return await self._rollback(cand, f"apply failed: {exc}")
        return await self._verdict(cand, t0)

    async def _verdict(self, cand: Stored, t0: float) -> Outcome:
        deadline = load_document(cand.document).remote_config.health_deadline_s
        reason = await self.target.wait_healthy(deadline)
        if reason is not None:
            return await self._rollback(cand, reason)
        self.store.commit(cand)
        self.lkg = cand
        self._emit(cand.version, Outcome.APPLIED, f"healthy after {time.monotonic() - t0:.1f} s")
        return Outcome.APPLIED

    async def _rollback(self, cand: Stored, reason: str) -> Outcome:
        good = load_document(self.lkg.document)
        self.store.note_rollback(cand, reason)
        await self.target.reconfigure(good)
        self.current = good
        self.store.drop_candidate()
        self._emit(cand.version, Outcome.ROLLED_BACK, f"{reason}; back on version {good.version}")
        return Outcome.ROLLED_BACK

    def _check_allowed(self, cfg: GatewayConfig) -> None:
        """Settings a push may not change: they would strand records or lock the cloud out."""
        from gatewayd.drivers import load_driver

        cur = self.current
        if cfg.state_dir != cur.state_dir:
            raise ConfigError(
                "gateway.state_dir",
                "cannot be changed by a push",
                "it would strand the buffered records; change the local file",
            )
        if cfg.buffer.path != cur.buffer.path:
            raise ConfigError(
                "buffer.path",
                "cannot be changed by a push",
                "it would strand the buffered records; change the local file",
            )
        if cfg.remote_config.enabled != cur.remote_config.enabled:
            raise ConfigError(
                "remote_config.enabled", "cannot be changed by a push", "change the local file"
            )
        if (cfg.remote_config.require_signed, cfg.remote_config.signing_key) != (
            cur.remote_config.require_signed,
            cur.remote_config.signing_key,
        ):
            raise ConfigError(
                "remote_config.require_signed",
                "cannot be changed by a push",
                "signature settings change only in the local file",
            )
        for i, dev in enumerate(cfg.devices):
            load_driver(dev.driver, f"devices[{i}].driver")
