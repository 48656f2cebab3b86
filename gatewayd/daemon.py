"""Orchestration: drivers → rules → buffer → uplink, on one asyncio loop.

APScheduler fires each poll group on its interval (one instance at a time, missed runs
coalesced, so a slow device never piles up work); the buffer's SQLite work runs on its own thread;
the uplink drives paho's socket from the loop. A new configuration (pushed or local) is applied
live by `reconfigure`: only changed devices restart, the buffer is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd import sdnotify
from gatewayd.buffer import Buffer
from gatewayd.config import GatewayConfig
from gatewayd.drivers import Driver, PollGroup, load_driver, poll_groups
from gatewayd.metrics import Metrics
from gatewayd.reading import Quality, Record, now_ms
from gatewayd.rules import Rules
from gatewayd.uplink import Uplink

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from gatewayd.remote_config import CommandHandler, ConfigManager

log = logging.getLogger("gatewayd")


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        config_dir: Path,
        state_dir: Path | None = None,
        local_doc: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_dir = config_dir
        self.state_dir = state_dir or Path(os.environ.get("STATE_DIRECTORY") or cfg.state_dir)
        self.local_doc = local_doc
        self.metrics = Metrics()
        self.rules = Rules(cfg.rules)
        self.drivers: dict[str, Driver] = {}
        self.buffer: Buffer | None = None
        self.uplink: Uplink | None = None
        self.remote: ConfigManager | None = None
        self.commands: CommandHandler | None = None
        self.polled_at: dict[str, float] = {}  # device -> monotonic time of last completed poll
        self._scheduler: AsyncIOScheduler | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def buffer_path(self) -> Path:
        p = Path(self.cfg.buffer.path)
        return p if p.is_absolute() else self.state_dir / p

    async def start(self) -> None:
        """Open the buffer, build drivers, start polling and the uplink. Raises on bad config."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        trial = None
        if self.local_doc is not None and self.cfg.remote_config.enabled:
            trial = self._init_remote_config()
            self.rules = Rules(self.cfg.rules)  # the configuration chosen at start may differ
        self.buffer = await Buffer.open(self.buffer_path, self.cfg.buffer)
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.start()
        # Rule windows close by the clock too, not only on their point's next reading.
        self._scheduler.add_job(
            self._tick_rules, "interval", seconds=1, id="rules_tick", max_instances=1, coalesce=True
        )
        self._apply_devices(self.cfg.devices)
        self._start_uplink()
        if self.remote is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.remote.run(trial)))
        log.info(
            "gateway_started version=%d devices=%d buffer=%s",
            self.cfg.version,
            len(self.drivers),
            self.buffer_path,
        )

    def _init_remote_config(self) -> Any:
        from gatewayd.config import load_document
        from gatewayd.remote_config import CommandHandler, ConfigManager, ConfigStore
        from gatewayd.remote_config.manager import startup_config

        assert self.local_doc is not None
        store = ConfigStore(self.state_dir / "config")
        lkg, trial, outcome = startup_config(self.cfg, self.local_doc, store)
        self.cfg = load_document((trial or lkg).document)
        self.remote = ConfigManager(
            self, store, self.cfg, lkg, self._report_config, self.metrics, self.config_dir
        )
        if outcome is not None:
            self.remote.last_outcome = outcome
            self.metrics.inc("config_outcomes", status=outcome["status"])
        self.commands = CommandHandler(self, self._reply_command, self.metrics)
        return trial

    # -- live reconfiguration ----------------------------------------------------------------

    async def reconfigure(self, new: GatewayConfig) -> None:
        """Apply `new` live: restart changed devices and, if its settings changed, the uplink."""
        old = self.cfg
        self.cfg = new
        old_devs = {d.id: d for d in old.devices}
        new_devs = {d.id: d for d in new.devices}
        for dev_id, dev in old_devs.items():
            if new_devs.get(dev_id) != dev:
                await self._remove_device(dev_id)
        self._apply_devices(d for d in new.devices if old_devs.get(d.id) != d)
        if new.rules != old.rules:
            self.rules.reload(new.rules)  # unchanged rules keep their state
        if new.uplink != old.uplink:
            await self._stop_uplink()
            self._start_uplink()
        self.metrics.inc("config_reconfigures")
        log.info("gateway_reconfigured version=%d devices=%d", new.version, len(self.drivers))

    async def wait_healthy(self, deadline_s: float) -> str | None:
        """None once the uplink is connected and every device completed a poll; else why not."""
        t0 = time.monotonic()
        while True:
            uplink_ok = self.uplink is not None and self.uplink.connected
            unpolled = [d.id for d in self.cfg.devices if self.polled_at.get(d.id, 0) < t0]
            if uplink_ok and not unpolled:
                return None
            if time.monotonic() - t0 >= deadline_s:
                if not uplink_ok:
                    why = self.uplink.last_error if self.uplink else None
                    return f"uplink not connected within {deadline_s:g} s ({why or 'no answer'})"
                return f"devices {', '.join(unpolled)} completed no poll within {deadline_s:g} s"
            await asyncio.sleep(0.1)

    def _apply_devices(self, devices: Any) -> None:
        assert self._scheduler is not None
        now = datetime.now(UTC)
        index = {d.id: i for i, d in enumerate(self.cfg.devices)}
        for dev in devices:
            cls = load_driver(dev.driver, f"devices[{index[dev.id]}].driver")
            self.drivers[dev.id] = cls(dev)
            for group in poll_groups(dev):
                self._scheduler.add_job(
                    self._poll,
                    "interval",
                    seconds=group.interval_ms / 1000,
                    args=[group],
                    id=group.name,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=max(1, group.interval_ms // 1000),
                    next_run_time=now,
                )

    async def _remove_device(self, dev_id: str) -> None:
        assert self._scheduler is not None
        for job in self._scheduler.get_jobs():
            if job.args and isinstance(job.args[0], PollGroup) and job.args[0].device == dev_id:
                job.remove()
        driver = self.drivers.pop(dev_id, None)
        self.polled_at.pop(dev_id, None)
        if driver is not None:
            await driver.close()

    def _start_uplink(self) -> None:
        assert self.buffer is not None
        self.uplink = Uplink(
            self.cfg.uplink,
            self.buffer,
            self.metrics,
            key_dir=self.config_dir,
            on_message=self._on_message,
            state=self._state,
        )
        self._uplink_task = asyncio.get_running_loop().create_task(self.uplink.run(), name="uplink")

    async def _stop_uplink(self) -> None:
        if self.uplink is not None:
            await self.uplink.stop()
        if self._uplink_task is not None:
            await asyncio.wait([self._uplink_task], timeout=2.0)
            self._uplink_task.cancel()
            with contextlib.suppress(BaseException):
                await self._uplink_task
            self._uplink_task = None

    def reload_local_file(self, path: Path) -> None:
        """SIGHUP: re-read the local file and apply it through the remote-config path."""
        import tomllib

        if self.remote is None:
            log.warning("reload_ignored reason=remote_config_disabled")
            return
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.error("reload_failed path=%s error=%s", path, exc)
            return
        self.remote.on_local(doc)

    # -- messages from the cloud -----------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        assert self.uplink is not None
        if topic == self.uplink.topics["config"]:
            if self.remote is not None:
                self.remote.on_push(payload)
        elif self.commands is not None:
            self.commands.on_message(topic, payload)

    def _report_config(self, outcome: dict[str, Any]) -> None:
        """Outcomes reach the cloud in the state document (see `_state`)."""
        if self.uplink is not None:
            self.uplink.state_changed()

    def _reply_command(self, result: dict[str, Any]) -> None:
        if self.uplink is not None:
            self.uplink.publish_json("command_results", result)

    # -- polling -----------------------------------------------------------------------------

    async def _state(self) -> dict[str, object]:
        """What the uplink publishes on the state topic (on change, at most once per second)."""
        stats = await self.buffer.stats() if self.buffer is not None else None
        counters = sorted({name for name, _ in self.metrics.counters})
        outcome = self.remote.last_outcome if self.remote is not None else None
        return {
            **({"config": outcome} if outcome else {}),
            "config_version": self.cfg.version,
            "health": "ok" if self.drivers or self.cfg.devices == () else "starting",
            "counters": {name: self.metrics.total(name) for name in counters},
            "buffer_depth": stats.depth if stats else None,
            "evictions": sum(stats.evicted.values()) if stats else 0,
        }

    async def _poll(self, group: PollGroup) -> None:
        driver = self.drivers.get(group.device)
        if driver is None:
            return
        t0 = time.monotonic()
        try:
            readings = await driver.poll(group)
        except Exception:  # a driver bug must not stop the scheduler or other devices
            log.exception("driver_crashed device=%s group=%s", group.device, group.name)
            self.metrics.inc("driver_crashes", device=group.device)
            return
        self.polled_at[group.device] = time.monotonic()
        self.metrics.inc("polls", device=group.device)
        self.metrics.set("poll_duration_seconds", time.monotonic() - t0, device=group.device)
        bad = sum(1 for r in readings if r.quality is Quality.BAD)
        self.metrics.inc("readings", len(readings), device=group.device)
        if bad:
            self.metrics.inc("readings_bad", bad, device=group.device)
        dropped = self.rules.dropped
        records = self.rules.process(readings)
        self.metrics.inc("rules_dropped", self.rules.dropped - dropped)
        await self._store(records)

    async def _tick_rules(self) -> None:
        await self._store(self.rules.tick(now_ms()))

    async def _store(self, records: list[Record]) -> None:
        if not records or self.buffer is None:
            return
        try:
            await self.buffer.append(records)
        except Exception as exc:
            log.error("buffer_append_failed error=%s", exc)
            self.metrics.inc("buffer_append_failures")
            return
        self.metrics.inc("buffered_records", len(records))

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Start, tell systemd we are ready, feed its watchdog, stop when `stop` is set."""
        await self.start()
        sdnotify.notify("READY=1\nSTATUS=running")
        interval = sdnotify.watchdog_interval_s()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval or 3600)
                if interval:
                    sdnotify.notify("WATCHDOG=1")
        finally:
            sdnotify.notify("STOPPING=1")
            await self.stop()

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        await self._stop_uplink()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for d in self.drivers.values():
            await d.close()
        if self.buffer is not None:
            await self.buffer.close()
            self.buffer = None
        log.info("gateway_stopped")
