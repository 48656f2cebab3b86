"""Orchestration: drivers → rules → buffer → uplink, on one asyncio loop.

APScheduler fires each poll group on its interval (one instance at a time, missed runs
coalesced, so a slow device never piles up work); the buffer's SQLite work runs on its own thread;
the uplink drives paho's socket from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd import sdnotify
from gatewayd.buffer import Buffer
from gatewayd.config import GatewayConfig
from gatewayd.drivers import Driver, PollGroup, load_driver, poll_groups
from gatewayd.metrics import Metrics
from gatewayd.reading import Quality
from gatewayd.rules import Rules
from gatewayd.uplink import Uplink

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("gatewayd")


class Gateway:
    def __init__(self, cfg: GatewayConfig, config_dir: Path, state_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.config_dir = config_dir
        self.state_dir = state_dir or Path(os.environ.get("STATE_DIRECTORY") or cfg.state_dir)
        self.metrics = Metrics()
        self.rules = Rules()
        self.drivers: dict[str, Driver] = {}
        self.buffer: Buffer | None = None
        self.uplink: Uplink | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def buffer_path(self) -> Path:
        p = Path(self.cfg.buffer.path)
        return p if p.is_absolute() else self.state_dir / p

    async def start(self) -> None:
        """Open the buffer, build drivers, start polling and the uplink. Raises on bad config."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        for i, dev in enumerate(self.cfg.devices):
            self.drivers[dev.id] = load_driver(dev.driver, f"devices[{i}].driver")(dev)
        self.buffer = await Buffer.open(self.buffer_path, self.cfg.buffer)
        self.uplink = Uplink(
            self.cfg.uplink, self.buffer, self.metrics, key_dir=self.config_dir, state=self._state
        )
        self._tasks.append(asyncio.get_running_loop().create_task(self.uplink.run(), name="uplink"))
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for dev in self.cfg.devices:
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
        self._scheduler.start()
        log.info("gateway_started devices=%d buffer=%s", len(self.drivers), self.buffer_path)

    async def _state(self) -> dict[str, object]:
        """What the uplink publishes on the state topic (on change, at most once per second)."""
        stats = await self.buffer.stats() if self.buffer is not None else None
        counters = sorted({name for name, _ in self.metrics.counters})
        return {
            "config_version": self.cfg.version,
            "health": "ok" if self.drivers or self.cfg.devices == () else "starting",
            "counters": {name: self.metrics.total(name) for name in counters},
            "buffer_depth": stats.depth if stats else None,
            "evictions": sum(stats.evicted.values()) if stats else 0,
        }

    async def _poll(self, group: PollGroup) -> None:
        driver = self.drivers[group.device]
        t0 = time.monotonic()
        try:
            readings = await driver.poll(group)
        except Exception:  # a driver bug must not stop the scheduler or other devices
            log.exception("driver_crashed device=%s group=%s", group.device, group.name)
            self.metrics.inc("driver_crashes", device=group.device)
            return
        self.metrics.inc("polls", device=group.device)
        self.metrics.set("poll_duration_seconds", time.monotonic() - t0, device=group.device)
        bad = sum(1 for r in readings if r.quality is Quality.BAD)
        self.metrics.inc("readings", len(readings), device=group.device)
        if bad:
            self.metrics.inc("readings_bad", bad, device=group.device)
        records = self.rules.process(readings)
        self.metrics.inc("rules_dropped", len(readings) - len(records))
        if not records or self.buffer is None:
            return
        try:
            await self.buffer.append(records)
        except Exception as exc:
            log.error("buffer_append_failed error=%s", exc)
            self.metrics.inc("buffer_append_failures")
            return
        self.metrics.inc("buffered_records", len(records))

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
        if self.uplink is not None:
            await self.uplink.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
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
