"""Commands from the cloud: `{"id": .., "point": "dev/p", "value": v}` writes a field device point;
`{"id": .., "command": "ping"}` is answered at once; `{"id": .., "command": "update", "version": ..,
"manifest": .., "signature": .., "url": ..}` (or `"source": "mqtt"`) installs a signed release
(gatewayd/lifecycle/update.py), answered once it is installed or refused; `rotate_key`
(optional `algorithm`, `deadline_s`) makes a new device key and `commit_key` tries it
(gatewayd/lifecycle/keys.py). Each gets one result message.

Writes go only to points the configuration marks writable, within their declared range. Commands
are not queued for unreachable devices: they fail fast, like Cloud IoT Core's. A token bucket
limits their rate.

Invariants:
- a command is strict JSON: NaN, Infinity and numbers too large for a float (1e400) are refused
  with a reason, never turned into a value (Python's json accepts all three by default);
- every result is strict JSON (checked with allow_nan=False) and has a status and a reason that
  names the cause: `ok`; `refused` (nothing was sent: not writable, out of range, not finite,
  does not fit the type, malformed, rate limited); `failed` (the device said no, or the connection
  was refused: nothing was written); `unknown` (no usable answer, e.g. a timeout: the write may
  have been applied, so it is never reported as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from gatewayd.config import GatewayConfig, PointConfig
from gatewayd.drivers import Driver, WriteError, check_write
from gatewayd.metrics import Metrics
from gatewayd.reading import Value, now_ms

if TYPE_CHECKING:
    from gatewayd.lifecycle.keys import KeyRing
    from gatewayd.lifecycle.update import Updater

log = logging.getLogger("gatewayd.commands")

WRITE_TIMEOUT_S = 5.0


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON; send a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number; send a finite number")
    return value


def parse_command(payload: bytes) -> Any:
    """A command's JSON, strictly: NaN, ±Infinity and overflowing numbers raise ValueError."""
    return json.loads(payload, parse_constant=_not_json, parse_float=_finite)


class Host(Protocol):
    cfg: GatewayConfig
    drivers: dict[str, Driver]  # and optionally `updater` (gatewayd.lifecycle.update.Updater)


async def _done(status: str, reason: str) -> tuple[str, str]:
    return status, reason


class CommandHandler:
    def __init__(
        self, host: Host, reply: Callable[[dict[str, Any]], None], metrics: Metrics
    ) -> None:
        self.host = host
        self.reply = reply
        self.metrics = metrics
        self._tokens = float(host.cfg.remote_config.commands_per_minute)
        self._refilled = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_message(self, topic: str, payload: bytes) -> None:
        # An update is checked here, before the next message: its chunks may follow in the same
        # read of the socket and need somewhere to go.
        job = self._begin(payload)
        task = asyncio.get_running_loop().create_task(self._handle(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take_token(self) -> bool:
        per_min = self.host.cfg.remote_config.commands_per_minute
        now = time.monotonic()
        self._tokens = min(per_min, self._tokens + (now - self._refilled) * per_min / 60)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _begin(self, payload: bytes) -> tuple[Any, Coroutine[Any, Any, tuple[str, str]] | str]:
        """The command's id and its work still to do, or the reason it is refused now."""
        cid: Any = None
        try:
            doc = parse_command(payload) if len(payload) <= 64 * 1024 else None
            if not isinstance(doc, dict):
                raise ValueError("a command is a JSON object")
            cid = doc.get("id")
            if not self._take_token():
                return cid, "rate limited; retry later"
            if "point" in doc:
                return cid, self._write(doc.get("point"), doc.get("value"))
            if doc.get("command") == "ping":
                return cid, _done("ok", "pong")
            if doc.get("command") == "update":
                return cid, self._update(doc)
            if doc.get("command") in ("rotate_key", "commit_key"):
                return cid, self._key_command(doc)
            return cid, (
                "unknown command; send {point, value} or "
                "{command: ping|update|rotate_key|commit_key}"
            )
        except (ValueError, RecursionError) as exc:
            return cid, f"malformed command: {exc}"

    def _update(self, doc: dict[str, Any]) -> Coroutine[Any, Any, tuple[str, str]] | str:
        from gatewayd.lifecycle.verify import UpdateRefused

        updater: Updater | None = getattr(self.host, "updater", None)
        if updater is None:
            return "update: this gateway has no updater"
        try:
            return updater.begin(doc)
        except (UpdateRefused, OSError) as exc:  # OSError: the state directory, e.g. full
            with contextlib.suppress(OSError):
                updater.refused(doc, str(exc))
            return f"update: {exc}"

    def _key_command(self, doc: dict[str, Any]) -> Coroutine[Any, Any, tuple[str, str]] | str:
        from gatewayd.lifecycle.keys import RotationRefused

        ring: KeyRing | None = getattr(self.host, "keyring", None)
        if ring is None:
            return f"{doc['command']}: the uplink does not use a device key ([uplink.auth] jwt)"
        alg, deadline = doc.get("algorithm"), doc.get("deadline_s")
        if alg is not None and not isinstance(alg, str):
            return "rotate_key: algorithm must be 'ES256' or 'RS256'"
        if deadline is not None and (not isinstance(deadline, int | float) or deadline <= 0):
            return "rotate_key: deadline_s must be a positive number of seconds"
        try:
            if doc["command"] == "rotate_key":
                new = ring.rotate(alg, float(deadline) if deadline is not None else None)
                return _done(
                    "ok",
                    f"new {new['algorithm']} key {new['key_id']}; its public key is in the state "
                    "(device_key.candidate): register it, then send commit_key",
                )
            kid = ring.commit()
        except RotationRefused as exc:
            return f"{doc['command']}: {exc}"
        return _done("ok", f"trying key {kid} now; the outcome follows in the state")

    async def _handle(self, job: tuple[Any, Coroutine[Any, Any, tuple[str, str]] | str]) -> None:
        cid, work = job
        if isinstance(work, str):
            status, reason = "refused", work
        else:
            status, reason = await work
        self.metrics.inc("commands", status=status)
        log.info("command id=%r status=%s reason=%r", cid, status, reason)
        result = {"id": cid, "status": status, "reason": reason, "ts": now_ms()}
        json.dumps(result, allow_nan=False)  # strict by construction; a bug here must be loud
        self.reply(result)

    def _find(self, point_id: Any) -> tuple[Driver, PointConfig] | str:
        if not isinstance(point_id, str) or "/" not in point_id:
            return "point must be 'device/point'"
        dev_id, _, pid = point_id.partition("/")
        for dev in self.host.cfg.devices:
            if dev.id == dev_id:
                for p in dev.points:
                    if p.id == pid:
                        driver = self.host.drivers.get(dev_id)
                        return (driver, p) if driver else "device is not running"
        return f"no point {point_id!r} in the configuration"

    async def _write(self, point_id: Any, value: Value) -> tuple[str, str]:
        found = self._find(point_id)
        if isinstance(found, str):
            return "refused", found
        driver, p = found
        try:
            check_write(p, value, point_id)  # before any driver: plugins may not check
        except WriteError as exc:
            return "refused", str(exc)
        try:
            await asyncio.wait_for(driver.write(p, value), WRITE_TIMEOUT_S)
        except WriteError as exc:
            return exc.outcome, str(exc)
        except TimeoutError:
            return "unknown", (
                f"{point_id}: timeout: no answer within {WRITE_TIMEOUT_S:g} s, outcome unknown; "
                "read the point back before retrying"
            )
        except Exception as exc:  # a driver's own error: it may have written, or not
            text = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            return "unknown", f"{point_id}: {text}: outcome unknown; read the point back"
        return "ok", f"wrote {value} to {point_id}"
