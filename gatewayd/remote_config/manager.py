"""A pushed configuration's life: validate, refuse stale, try as candidate, keep or roll back.

Invariants:
- every push gets exactly one outcome: applied, rejected, rolled_back, or superseded (a newer
  push arrived while it waited behind a candidate being judged; only the newest waiting one is
  tried), except a redelivery of a document whose outcome was already reported (the retained
  config at every reconnect), which is neither counted nor written again, and, from a cloud
  without retained messages (ClearBlade redelivers at QoS 1, the latest version wins), a
  version older than the newest tried, which is a redelivery too: ignored, not counted;
- a push may not change what the gateway cannot apply live (buffer, metrics, gateway id) nor
  what would cut it off from its own config topic (device, client id, config topic): refused
  (the local file, on SIGHUP, may change the latter);
- a push is parsed once into a Checked (remote_config/checked.py) that flows on to the push
  rules, the candidate, its verdict and a later rollback to it; a stored candidate or applied
  document is parsed once at start, and the daemon starts with that result;
- the manager never dies of a push: whatever fails becomes an outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gatewayd.config import ConfigError, GatewayConfig, UplinkConfig, load_document
from gatewayd.config.profiles import limits_of
from gatewayd.config.section import INT_LIMIT
from gatewayd.logs import quote
from gatewayd.metrics import Metrics
from gatewayd.reading import now_ms

from .checked import Checked
from .document import PushRejected, decode_push
from .store import OUTCOME_DIGEST_CHARS, ConfigStore, Stored, digest

log = logging.getLogger("gatewayd.remote_config")

# A candidate that was being tried when the process died gets one more start, then is rolled back.
MAX_STARTS = 2
RECENT_OUTCOMES = 8


class Outcome(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


class Target(Protocol):
    """What the manager needs from the running gateway."""

    async def reconfigure(self, cfg: GatewayConfig, trial: bool = True) -> None: ...

    async def wait_healthy(self, deadline_s: float) -> str | None:
        """None once healthy; otherwise, at the deadline, the reason it is not."""
        ...


Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Startup:
    lkg: Checked  # the last known good configuration
    trial: Checked | None  # a candidate to try at start, under the health deadline
    outcome: dict[str, Any] | None  # the outcome to report (restored from disk, or new)
    new_outcome: bool = False  # decided at this start (a rollback), so count it


def startup_config(local: GatewayConfig, local_doc: dict[str, Any], store: ConfigStore) -> Startup:
    """Which configuration to start with; each stored document is parsed here, once."""
    base = Checked(Stored(local.version, local_doc), local)
    applied = store.applied()
    if applied is not None and applied.version >= local.version:
        try:
            base = Checked.parse(applied)
        except ConfigError as exc:  # e.g. written by an older gatewayd with another schema
            log.warning("applied_config_unusable version=%d error=%s", applied.version, exc)
    stored = store.candidate()
    cand: Checked | None = None
    if stored is not None and stored.version > base.version:
        try:
            cand = Checked.parse(stored)
        except ConfigError as exc:  # stored by an older gatewayd that let it through
            log.warning("candidate_unusable version=%d error=%s", stored.version, exc)
    if cand is None:
        store.drop_candidate()
        _warn_if_not_local(local.version, local_doc, base.stored)
        return Startup(base, None, store.last_outcome())
    if cand.stored.starts >= MAX_STARTS:
        reason = "the gateway stopped while applying it, twice; rolled back at start"
        store.note_rollback(cand.stored, reason)
        outcome = _outcome(cand.version, Outcome.ROLLED_BACK, reason, cand.stored.digest)
        # The outcome before the candidate goes: a kill between the two then rolls it back again
        # at the next start, instead of leaving no candidate and no outcome to report.
        store.note_outcome(outcome)
        store.drop_candidate()
        log.warning("config_rolled_back version=%d reason=%r", cand.version, reason)
        _warn_if_not_local(local.version, local_doc, base.stored)
        return Startup(base, None, outcome, new_outcome=True)
    s = cand.stored
    cand = Checked(Stored(s.version, s.document, s.starts + 1), cand.cfg)
    store.save_candidate(cand.stored)
    _warn_if_not_local(local.version, local_doc, cand.stored)
    return Startup(base, cand, store.last_outcome())


def not_taken(local_version: int, version: int, what: str) -> str:
    """Why the local file is not what runs, and what to do about it."""
    rel = "below" if local_version < version else "equal to"
    return (
        f"local file version {local_version} is {rel} the {what} version {version}: "
        f"raise `version` above {version} to take the local file, or push"
    )


def _warn_if_not_local(local_version: int, local_doc: dict[str, Any], chosen: Stored) -> None:
    if digest(chosen.document) != digest(local_doc):
        what = "applied pushed" if chosen.starts == 0 else "pushed candidate"
        log.warning(
            "local_file_not_taken local_version=%d version=%d reason=%s",
            local_version,
            chosen.version,
            quote(not_taken(local_version, chosen.version, what)),
        )


def override_note(local_version: int, local_doc: dict[str, Any], store_dir: Path) -> str | None:
    """For `gatewayd check`: the applied pushed document that `run` would start with instead."""
    if not (store_dir / "applied.json").is_file():  # ConfigStore() would create the folder
        return None
    applied = ConfigStore(store_dir).applied()
    if applied is None or applied.version < local_version:
        return None
    if digest(applied.document) == digest(local_doc):
        return None
    try:
        load_document(applied.document)
    except ConfigError:  # startup_config falls back to the local file
        return None
    return f"{store_dir / 'applied.json'} overrides this file at start: " + not_taken(
        local_version, applied.version, "applied pushed"
    )


def _version_of(doc: dict[str, Any]) -> int | None:
    """The version a document claims, if it is one a config may have (for its outcome)."""
    v = doc.get("version")
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT_LIMIT
    return v if ok else None


def _outcome(
    version: int | None, status: Outcome, reason: str = "", doc_digest: str | None = None
) -> dict[str, Any]:
    """`digest`: the decided document's (applied, rolled back), so a channel that is asked again
    for a version (an AWS Job) can tell the same document from another one under that version."""
    out = {"version": version, "status": str(status), "reason": reason, "ts": now_ms()}
    if doc_digest is not None:
        out["digest"] = doc_digest[:OUTCOME_DIGEST_CHARS]
    return out


def refused_while_off(payload: bytes) -> dict[str, Any]:
    """The outcome of a push to a gateway whose [remote_config] is off: a cloud that waits for an
    answer (an AWS Job, a twin's reported state) gets one instead of waiting for ever."""
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None  # signed, or not JSON: no version to name
    version = _version_of(doc) if isinstance(doc, dict) else None
    return _outcome(
        version,
        Outcome.REJECTED,
        "remote configuration is off on this gateway ([remote_config] enabled = false); "
        "set enabled = true in its local config to accept pushes",
    )


def _warn_unchanged(version: int) -> None:
    log.warning(
        "reload_unchanged version=%d reason=%s",
        version,
        quote(
            f"the local file is the applied configuration (version {version}); nothing changed: "
            f"edit it and raise `version` above {version} to apply a change"
        ),
    )


class ConfigManager:
    def __init__(
        self,
        target: Target,
        store: ConfigStore,
        current: GatewayConfig,
        lkg: Stored | Checked,
        report: Report,
        metrics: Metrics,
        config_dir: Path,
    ) -> None:
        self.target = target
        self.store = store
        self.current = current
        # The last known good document, and what it parsed to once known (a rollback applies
        # it); a bare Stored (tests) is parsed at the first rollback.
        self.lkg = lkg.stored if isinstance(lkg, Checked) else lkg
        self._good: Checked | None = lkg if isinstance(lkg, Checked) else None
        self.report = report
        self.metrics = metrics
        self.config_dir = config_dir
        self.last_outcome: dict[str, Any] | None = None
        # The state document is published at most once a second: outcomes decided within one
        # second would hide each other, so the last few travel with it.
        self.recent_outcomes: deque[dict[str, Any]] = deque(maxlen=RECENT_OUTCOMES)
        # The newest push waiting behind the one being handled: (payload, from the local file).
        self._pending: tuple[bytes | dict[str, Any], bool] | None = None
        self._handling: bytes | dict[str, Any] | None = None
        self._last_rejected: bytes | None = None  # a rejected payload is not reported twice
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
        """Called from the uplink for every message on the config topic."""
        self._enqueue(payload, False)

    def on_local(self, doc: dict[str, Any]) -> None:
        """SIGHUP: the local file goes through the same path, trusted (no signature needed)."""
        self._enqueue(doc, True)

    def _enqueue(self, item: bytes | dict[str, Any], trusted: bool) -> None:
        """Latest wins: a push still waiting when a newer one comes is reported superseded."""
        if item == self._handling:
            # The broker redelivers the retained document (the uplink reconnected while it was
            # being tried): it is the one being judged, and gets that verdict.
            log.debug("config_redelivery_ignored")
            return
        if self._pending is not None:
            old = self._pending[0]
            if old != item:
                self._emit(
                    self._peek_version(old, self._pending[1]),
                    Outcome.SUPERSEDED,
                    "a newer push arrived while it waited for the configuration being tried; "
                    "only the newest is tried",
                )
        self._pending = (item, trusted)
        self._wake.set()

    def _peek_version(self, item: bytes | dict[str, Any], trusted: bool) -> int | None:
        try:
            doc = item if isinstance(item, dict) else self._decode(item, trusted)
        except PushRejected:
            return None
        return _version_of(doc)

    def _decode(self, payload: bytes, trusted: bool) -> dict[str, Any]:
        rc = self.current.remote_config
        return decode_push(payload, rc.max_document_bytes, None if trusted else self._key)

    async def run(self, trial: Checked | None = None) -> None:
        if trial is not None:
            await self._verdict(trial, time.monotonic())
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is None:
                continue
            self._handling = pending[0]
            try:
                await self.handle(*pending)
            except Exception as exc:  # a push must never take the manager down, nor go unanswered
                log.exception("config_push_failed")
                self._emit(
                    self._peek_version(*pending), Outcome.REJECTED, f"internal error: {exc!r}"
                )
            finally:
                self._handling = None

    def _emit(
        self, version: int | None, status: Outcome, reason: str = "", doc_digest: str | None = None
    ) -> None:
        out = _outcome(version, status, reason, doc_digest)
        self.last_outcome = out
        self.recent_outcomes.append(out)
        if status in (Outcome.APPLIED, Outcome.ROLLED_BACK):  # others change nothing on disk
            self.store.note_outcome(out)
        self.metrics.inc("config_outcomes", status=str(status))
        log.info("config_%s version=%s reason=%r", status, version, reason)
        self.report(out)

    async def handle(self, payload: bytes | dict[str, Any], trusted: bool = False) -> Outcome:
        """Decode and validate the push once (a Checked); everything after uses that result."""
        version: int | None = None
        raw = payload if isinstance(payload, bytes) else None
        if raw is not None and raw == self._last_rejected:
            log.debug("config_replay_ignored status=rejected")  # the retained push, again
            return Outcome.REJECTED
        try:
            doc = payload if isinstance(payload, dict) else self._decode(payload, trusted)
            version = _version_of(doc)
            cfg = load_document(doc)
            self._check_allowed(cfg, trusted)
        except (PushRejected, ConfigError) as exc:
            self._last_rejected = raw
            if trusted:
                log.warning("local_file_not_taken reason=%s", quote(exc))
            self._emit(version, Outcome.REJECTED, str(exc))
            return Outcome.REJECTED
        self._last_rejected = None
        if digest(doc) == self.lkg.digest:
            last = self.last_outcome or {}
            if last.get("version") == cfg.version and last.get("status") == Outcome.APPLIED:
                # Redelivered at every reconnect (retained): reported once, not counted again.
                log.debug("config_replay_ignored version=%d status=applied", cfg.version)
                if trusted:
                    _warn_unchanged(cfg.version)
                return Outcome.APPLIED
            if trusted:
                _warn_unchanged(cfg.version)
            self._emit(
                cfg.version, Outcome.APPLIED, "identical to the applied configuration", digest(doc)
            )
            return Outcome.APPLIED
        if self.store.is_last_rollback(cfg.version, digest(doc)):
            # The retained push comes again at every reconnect: the rollback stays the answer.
            log.debug("config_replay_ignored version=%d", cfg.version)
            return Outcome.ROLLED_BACK
        highest = max(self.store.highest_tried(), self.lkg.version)
        if cfg.version < highest and not limits_of(self.current.uplink).retained:
            log.debug("config_redelivery_ignored version=%d newest=%d", cfg.version, highest)
            return Outcome.SUPERSEDED
        if cfg.version <= highest:
            self._last_rejected = raw
            if trusted:
                what = "applied" if highest == self.lkg.version else "highest tried"
                log.warning(
                    "local_file_not_taken local_version=%d version=%d reason=%s",
                    cfg.version,
                    highest,
                    quote(not_taken(cfg.version, highest, what)),
                )
            self._emit(
                cfg.version,
                Outcome.REJECTED,
                f"version {cfg.version} is not newer than {highest} (stale or replayed); "
                "push a higher version",
            )
            return Outcome.REJECTED
        cand = Checked(Stored(cfg.version, doc, starts=1), cfg)
        self.store.save_candidate(cand.stored)
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

    async def _verdict(self, cand: Checked, t0: float) -> Outcome:
        reason = await self.target.wait_healthy(cand.cfg.remote_config.health_deadline_s)
        if reason is not None:
            return await self._rollback(cand, reason)
        self.store.commit(cand.stored)
        self.lkg, self._good = cand.stored, cand
        took = f"healthy after {time.monotonic() - t0:.1f} s"
        self._emit(cand.version, Outcome.APPLIED, took, cand.digest)
        return Outcome.APPLIED

    async def _rollback(self, cand: Checked, reason: str) -> Outcome:
        if self._good is None:
            self._good = Checked.parse(self.lkg)
        good = self._good.cfg
        self.store.note_rollback(cand.stored, reason)
        await self.target.reconfigure(good, trial=False)
        self.current = good
        self.store.drop_candidate()
        back = f"{reason}; back on version {good.version}"
        self._emit(cand.version, Outcome.ROLLED_BACK, back, cand.digest)
        return Outcome.ROLLED_BACK

    def _check_allowed(self, cfg: GatewayConfig, trusted: bool = False) -> None:
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
        # Read once at start, so a push could only pretend to apply them: refused instead.
        for place, new, old in (
            ("buffer", cfg.buffer, cur.buffer),
            ("metrics", cfg.metrics, cur.metrics),
            ("gateway.id", cfg.gateway_id, cur.gateway_id),
        ):
            if new != old:
                key = next(
                    (
                        f"{place}.{k}"
                        for k in getattr(new, "__slots__", ())
                        if getattr(new, k) != getattr(old, k)
                    ),
                    place,
                )
                beyond = " (an address beyond loopback in particular)" if place == "metrics" else ""
                raise ConfigError(
                    key,
                    "cannot be changed by a push: it is not applied while the gateway runs",
                    f"change it in the local file{beyond} and restart the gateway",
                )
        if not trusted:  # the local file (SIGHUP) may move the gateway: it is not heard there
            self._check_identity(cfg)
            self._check_secret_files(cfg)
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
        # The parse found each driver by name (config.options.find_driver); a push may still not
        # name a plugin that is no Driver at all, which only the registry can tell.
        for i, dev in enumerate(cfg.devices):
            load_driver(dev.driver, f"devices[{i}].driver")

    def _check_identity(self, cfg: GatewayConfig) -> None:
        """The gateway hears pushes only on its own config topic, as its own client: a push that
        moved either would be the last one it ever heard (across restarts, too)."""
        cur, new = self.current.uplink, cfg.uplink
        for key, before, after in (
            ("uplink.device", cur.device, new.device),
            ("uplink.client_id", _client_id(cur), _client_id(new)),
            ("uplink.topics.config", _topic(cur, "config"), _topic(new, "config")),
        ):
            if before != after:
                raise ConfigError(
                    key,
                    f"would change {before!r} to {after!r} and cut the gateway off from its "
                    "config topic",
                    "the device identity and the config topic change only in the local file",
                )

    def _check_secret_files(self, cfg: GatewayConfig) -> None:
        """Where the keys and tokens are read from is provisioning, like the identity: a push
        naming another file (with another host beside it) could send any file the daemon can read
        as a token, or sign with a key the operator never gave it. Key rotation has its own
        command, which keeps these paths."""
        cur, new = self.current.uplink, cfg.uplink
        for key, before, after in (
            ("uplink.auth.private_key", cur.auth.private_key, new.auth.private_key),
            ("uplink.auth.device_key_file", cur.auth.device_key_file, new.auth.device_key_file),
            (
                "uplink.auth.access_token_file",
                cur.auth.access_token_file,
                new.auth.access_token_file,
            ),
            ("uplink.tls.key_file", cur.tls.key_file, new.tls.key_file),
        ):
            if before != after:
                raise ConfigError(
                    key,
                    "cannot be changed by a push: the files keys and tokens come from are set "
                    "where the gateway is provisioned",
                    "change it in the local file and restart the gateway (or rotate the key "
                    "with the rotate_key command)",
                )


def _client_id(up: UplinkConfig) -> str:
    return up.client_id.format(**up.template_values())


def _topic(up: UplinkConfig, name: str) -> str:
    template: str = getattr(up.topics, name)
    return template.format(**up.template_values())
