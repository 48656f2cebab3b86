"""The `update` command: fetch a signed release, verify it, build its venv, switch, restart; and,
on the new release, confirm it healthy within the deadline or go back to the previous one.

Steps, each reported in the state document (`software.update_step`) while it runs:
verify the manifest (signature, buffer format, size bound) → fetch every file into
`<state>/update/downloads/<version>/` (by URL, or in MQTT chunks on
`<commands>/update/<version>/<file index>/<byte offset>`) → check each file's size and SHA-256 →
build `<releases>/<version>` from those files only → write the marker → `previous` → `current`
→ exit with EXIT_RESTART (the supervisor starts `current`).

Invariants: nothing under the releases directory changes before every check passed; at most one
update runs at a time; every update that got past parsing ends with exactly one outcome
(`refused`, `failed`, `applied` or `rolled_back`) in outcome.json and on the state topic; the
configuration that enables this is the local file's (a push cannot change the release key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from gatewayd import __version__
from gatewayd.config import UpdateConfig
from gatewayd.logs import quote
from gatewayd.metrics import Metrics

from .marker import UpdateFiles, check_start
from .releases import BuildFailed, Releases
from .verify import Manifest, UpdateRefused, check_file, load_public_key, parse_manifest

log = logging.getLogger("gatewayd.lifecycle")

DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not per file
# A test hook: hold (never return) at the named step, so a test can SIGKILL the process there.
HOLD_ENV = "GATEWAYD_UPDATE_HOLD"


class Host(Protocol):
    async def wait_healthy(self, deadline_s: float) -> str | None: ...

    def request_restart(self, reason: str) -> None: ...

    def state_changed(self) -> None: ...


Result = tuple[str, str]  # (status, reason) of the command
Fetch = Callable[[Manifest, Path], Awaitable[None]]


class FetchFailed(Exception):
    """A file could not be fetched (network, server): the update failed, nothing installed."""


class Updater:
    def __init__(
        self, cfg: UpdateConfig, config_dir: Path, state_dir: Path, host: Host, metrics: Metrics
    ) -> None:
        self.cfg = cfg
        self.config_dir = config_dir
        self.files = UpdateFiles(state_dir)
        self.releases = Releases(Path(cfg.releases_dir))
        self.host = host
        self.metrics = metrics
        self.last_outcome = self.files.outcome()
        self.step: dict[str, str] | None = None  # the update under way: version and step
        self._receiver: Receiver | None = None
        self._pending: dict[str, Any] | None = None
        for status in ("applied", "rolled_back", "refused", "failed"):
            metrics.inc("update_outcomes", 0, status=status)
        metrics.inc("update_bytes_received", 0)

    # -- at start ----------------------------------------------------------------------------

    def start(self) -> bool:
        """Settle what the last process left; True if this release must now prove healthy."""
        try:
            self._pending = check_start(self.files, self.releases, self.cfg.max_starts, False)
        except OSError as exc:
            log.error("update_check_failed error=%s", quote(exc))
            return False
        self.last_outcome = self.files.outcome()
        if self._pending is not None and self._pending.get("version") != __version__:
            # `current` names the new release but another one runs (started by hand): leave the
            # marker to the process that runs from `current`.
            self._pending = None
        return self._pending is not None

    async def confirm(self) -> None:
        """The new release: healthy within the deadline → applied; else back to the previous."""
        pending = self._pending
        assert pending is not None
        self._set_step(str(pending["version"]), "confirming")
        why = await self.host.wait_healthy(self.cfg.health_deadline_s)
        previous = str(pending.get("previous"))
        ident = {k: pending.get(k) for k in ("id", "version", "previous")}
        if why is None:
            self._finish({**ident, "status": "applied", "reason": f"healthy on {__version__}"})
            self.files.clear_pending()
            with contextlib.suppress(OSError):
                self.releases.prune()
            return
        reason = f"{__version__} not healthy: {why}; back on {previous}"
        self._finish({**ident, "status": "rolled_back", "reason": reason})
        if self.releases.complete(previous) is not None:
            self.releases.set_link("current", previous)
        self.files.clear_pending()
        self.host.request_restart(f"update_rolled_back to={previous}")

    # -- the command ---------------------------------------------------------------------------

    def begin(self, doc: dict[str, Any]) -> Coroutine[Any, Any, Result]:
        """Check the command and its manifest now (chunks may follow in the same read); the
        returned coroutine does the rest. Raises UpdateRefused with the reason."""
        if self.cfg.release_key is None:
            raise UpdateRefused(
                "update is off: set [update] release_key in the local configuration file"
            )
        if self.step is not None:
            raise UpdateRefused(f"an update to {self.step['version']} is under way; wait for it")
        if not self.releases.runs_this_process():
            raise UpdateRefused(
                f"this gatewayd does not run from {self.releases.root}/current, so there is no "
                "release to come back to; install it with systemd/install.sh"
            )
        key_path = Path(self.cfg.release_key)
        key = load_public_key(key_path if key_path.is_absolute() else self.config_dir / key_path)
        m = parse_manifest(doc.get("manifest"), doc.get("signature"), key, self.cfg.max_bytes)
        if doc.get("version") != m.version:
            raise UpdateRefused(
                f"version: the command names {doc.get('version')!r}, the manifest {m.version!r}"
            )
        if m.version == __version__:
            raise UpdateRefused(f"version: {m.version} is the running version")
        url = doc.get("url")
        if doc.get("source") == "mqtt":
            fetch: Fetch = self._receive_chunks
        elif isinstance(url, str) and url.startswith(("http://", "https://")):
            fetch = self._download_from(url)
        else:
            raise UpdateRefused(
                "source: give url = 'http(s)://...' (the files' folder) or source = 'mqtt'"
            )
        dest = self.files.downloads / m.version
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if doc.get("source") == "mqtt":
            self._receiver = Receiver(m, dest, self.metrics)
        self._set_step(m.version, "download")
        return self._install(m, dest, fetch, doc.get("id"))

    def refused(self, doc: Any, reason: str) -> None:
        """Record a refusal made before `begin` returned (the state shows the last outcome)."""
        version = doc.get("version") if isinstance(doc, dict) else None
        self._finish(
            end_step=False,
            outcome={
                "id": _id(doc),
                "version": version,
                "previous": __version__,
                "status": "refused",
                "reason": reason,
            },
        )

    async def _install(self, m: Manifest, dest: Path, fetch: Fetch, cid: Any) -> Result:
        ident = {"id": cid, "version": m.version, "previous": __version__}
        t0 = time.monotonic()
        try:
            await fetch(m, dest)
            self._set_step(m.version, "verify")
            for f in m.files:
                check_file(dest / f.name, f)
            self._set_step(m.version, "build")
            await self.releases.build(m.version, dest, m.digest, self._hold)
            self._set_step(m.version, "switch")
            previous = self.releases.link("current")
            assert previous is not None  # runs_this_process() said so in begin()
            self.files.write_pending({**ident, "previous": previous, "starts": 0})
            self.releases.set_link("previous", previous)
            await self._hold("switch")
            self.releases.set_link("current", m.version)
        except UpdateRefused as exc:
            self._finish({**ident, "status": "refused", "reason": str(exc)})
            return "refused", str(exc)
        except Exception as exc:  # BuildFailed, FetchFailed, OSError; anything else is a bug
            if not isinstance(exc, BuildFailed | FetchFailed | OSError):
                log.exception("update_crashed version=%s", quote(m.version))
            reason = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                self.releases.clean()
            self._finish({**ident, "status": "failed", "reason": reason})
            return "failed", reason
        finally:
            self._receiver = None
            shutil.rmtree(dest, ignore_errors=True)
        log.info(
            "update_installed version=%s from=%s bytes=%d seconds=%.1f",
            m.version, __version__, m.total_bytes, time.monotonic() - t0,
        )  # fmt: skip
        self.host.request_restart(f"update to={m.version}")
        return "ok", f"installed {m.version}; restarting on it; the outcome follows in the state"

    def _finish(self, outcome: dict[str, Any], end_step: bool = True) -> None:
        if end_step:  # not for a command refused while another update is under way
            self.step = None
        self.files.write_outcome(outcome)
        self.last_outcome = self.files.outcome()
        self.metrics.inc("update_outcomes", status=outcome["status"])
        level = logging.INFO if outcome["status"] == "applied" else logging.WARNING
        log.log(
            level, "update_%s version=%s reason=%s",
            outcome["status"], quote(str(outcome.get("version"))), quote(outcome["reason"]),
        )  # fmt: skip
        self.host.state_changed()

    def _set_step(self, version: str, step: str) -> None:
        self.step = {"version": version, "step": step}
        log.info("update_step version=%s step=%s", quote(version), step)
        self.host.state_changed()

    async def _hold(self, step: str) -> None:
        if os.environ.get(HOLD_ENV) == step:
            log.warning("update_held step=%s", step)
            await asyncio.Event().wait()

    # -- fetching ------------------------------------------------------------------------------

    def _download_from(self, url: str) -> Fetch:
        async def fetch(m: Manifest, dest: Path) -> None:
            loop = asyncio.get_running_loop()
            hold = os.environ.get(HOLD_ENV) == "download"
            for f in m.files:
                n = await loop.run_in_executor(
                    None, _download, f"{url.rstrip('/')}/{f.name}", dest / f.name, f.size, hold
                )
                self.metrics.inc("update_bytes_received", n)

        return fetch

    async def _receive_chunks(self, m: Manifest, dest: Path) -> None:
        r = self._receiver
        assert r is not None
        while not r.done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.done.wait(), 1.0)
            if time.monotonic() - r.last > self.cfg.chunk_timeout_s:
                raise UpdateRefused(
                    f"no chunk for {self.cfg.chunk_timeout_s:g} s ({r.received} of "
                    f"{r.manifest.total_bytes} bytes came); send the update again"
                )
        r.close()

    def on_chunk(self, path: str, payload: bytes) -> None:
        """A chunk on `<commands>/update/<version>/<index>/<offset>` (path is the part after
        `update/`). Chunks of no update under way, or out of bounds, are dropped and counted."""
        r = self._receiver
        parts = path.split("/")
        ok = False
        if r is not None and len(parts) == 3 and parts[0] == r.manifest.version:
            with contextlib.suppress(ValueError):
                ok = r.chunk(int(parts[1]), int(parts[2]), payload)
        if not ok:
            self.metrics.inc("update_chunks_dropped")

    # -- the state document --------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": __version__, "release": self.releases.link("current")}
        if self.last_outcome is not None:
            doc["update"] = self.last_outcome
        if self.step is not None:
            doc["update_step"] = self.step
        return doc


def _id(doc: Any) -> Any:
    return doc.get("id") if isinstance(doc, dict) else None


class Receiver:
    """The files of one release arriving in chunks; each written where its offset says."""

    def __init__(self, m: Manifest, dest: Path, metrics: Metrics) -> None:
        self.manifest = m
        self.metrics = metrics
        self.fds = [os.open(dest / f.name, os.O_WRONLY | os.O_CREAT, 0o600) for f in m.files]
        self.seen: list[set[int]] = [set() for _ in m.files]
        self.left = [f.size for f in m.files]
        self.received = 0
        self.last = time.monotonic()
        self.done = asyncio.Event()

    def chunk(self, index: int, offset: int, data: bytes) -> bool:
        if not (0 <= index < len(self.fds)) or offset < 0 or not data:
            return False
        if offset + len(data) > self.manifest.files[index].size or offset in self.seen[index]:
            return False
        os.pwrite(self.fds[index], data, offset)
        self.seen[index].add(offset)
        self.left[index] -= len(data)
        self.received += len(data)
        self.last = time.monotonic()
        self.metrics.inc("update_bytes_received", len(data))
        if all(n <= 0 for n in self.left):
            self.done.set()
        return True

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _download(url: str, dest: Path, size: int, hold: bool) -> int:
    """One file, at most `size` bytes (a longer answer is refused); returns the bytes read."""
    part = dest.with_name(dest.name + ".part")
    n = 0
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp,
            part.open("wb") as out,
        ):
            while block := resp.read(64 * 1024):
                n += len(block)
                if n > size:
                    raise UpdateRefused(
                        f"{dest.name}: {url} sends more than the {size} bytes listed"
                    )
                out.write(block)
                if hold:
                    out.flush()
                    log.warning("update_held step=download")
                    time.sleep(3600)
    except (urllib.error.URLError, OSError) as exc:
        raise FetchFailed(f"{dest.name}: cannot fetch {url}: {exc}; check the URL") from exc
    part.replace(dest)
    return n
