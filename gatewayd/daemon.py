"""Orchestration: drivers → rules → buffer → uplink, on one asyncio loop.

The monotonic scheduler fires each poll group on its interval (one instance at a time, missed runs
coalesced, so a slow device never piles up work; see `polling`); the buffer's SQLite work runs on
its own thread; the uplink drives paho's socket from the loop. Long-running tasks (the uplink) are
supervised: a crash is logged, counted and the task restarted, never fatal to the process.
A new configuration (pushed, or the local file on SIGHUP) is applied live by `reconfigure`: only
changed devices restart, the buffer is never touched (see `remote_config`).

Stop order, within systemd's 5 s budget: no new polls → polls in flight finish and their records
are committed → the uplink waits for PUBACKs in flight → buffer closed. Whatever was committed and
not acknowledged stays in the buffer for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd import __version__, logs, sdnotify
from gatewayd.backoff import exponential
from gatewayd.buffer import Buffer
from gatewayd.clock import PLAUSIBLE_MS, WallClock, clock_plausible
from gatewayd.config import GatewayConfig
from gatewayd.device_health import DeviceHealth
from gatewayd.drivers import PollGroup
from gatewayd.lifecycle import EXIT_RESTART
from gatewayd.lifecycle.update import Updater
from gatewayd.logs import quote
from gatewayd.memory import MemoryGuard
from gatewayd.metrics import Metrics
from gatewayd.metrics_http import MetricsServer
from gatewayd.polling import Poller
from gatewayd.reading import Reading, Record, now_ms
from gatewayd.rules import Rules
from gatewayd.uplink import Uplink

if TYPE_CHECKING:
    from gatewayd.lifecycle.keys import KeyRing
    from gatewayd.remote_config import CommandHandler, ConfigManager
    from gatewayd.remote_config.health import TrialWatch

log = logging.getLogger("gatewayd")

# The stop budget (systemd and the issue allow 5 s): polls in flight, then PUBACKs in flight,
# then the uplink task; drivers close within 1 s inside the poller's stop.
POLL_GRACE_S = 1.0
UPLINK_DRAIN_S = 2.0
TASKS_GRACE_S = 0.5
LOOP_STALL_S = 0.5  # a loop late by this much is logged and counted


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        config_dir: Path,
        state_dir: Path | None = None,
        config_path: Path | None = None,
        local_doc: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_dir = config_dir
        self.config_path = config_path
        self.state_dir = state_dir or Path(os.environ.get("STATE_DIRECTORY") or cfg.state_dir)
        self.local_doc = local_doc  # the local file as a document: remote config's baseline
        self.metrics = Metrics()
        self.rules = Rules(cfg.rules)
        self.poller = Poller(self.metrics, self._handle, MemoryGuard(cfg.memory_limit_mb << 20))
        self.drivers = self.poller.drivers  # live view: device id -> running driver
        self.device_health = DeviceHealth(self.metrics)  # device_down/up events, state `devices`
        self.buffer: Buffer | None = None
        self.uplink: Uplink | None = None
        self.metrics_server: MetricsServer | None = None
        self.remote: ConfigManager | None = None
        self._refused_off: dict[str, Any] | None = None  # a push's, with remote config off
        self.commands: CommandHandler | None = None
        self._uplink_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._started = time.time()
        self._stop_event: asyncio.Event | None = None
        self.exit_code = 0  # EXIT_RESTART after an update or its rollback moved `current`
        # Self-update takes its settings from the local file only (a push cannot enable it).
        self.updater = Updater(cfg.update, config_dir, self.state_dir, self, self.metrics)
        # Device-key rotation (lifecycle/keys.py): new keys live in the state directory.
        self.keyring: KeyRing | None = None
        auth = cfg.uplink.auth
        if auth.kind == "jwt":
            from gatewayd.lifecycle.keys import KeyRing

            key = Path(auth.private_key)
            key = key if key.is_absolute() else config_dir / key
            self.keyring = KeyRing(self.state_dir / "keys", key, auth.algorithm, auth.key_id)
            self.keyring.on_change = self.state_changed
        self.clock = WallClock()
        self._rules_seen: dict[str, int] = {}  # the rules' running counts at the last collect
        # Health watches, fed by every poll while one runs: a config candidate and a new release
        # may be judged at the same time, each by its own. `_next_watch` is made ahead (at start,
        # at a reconfigure) so the polls before `wait_healthy` begins count too.
        self._watches: set[TrialWatch] = set()
        self._next_watch: TrialWatch | None = None
        for name in ("uplink_reconnects", "uplink_failovers", "rules_dropped", "clock_steps"):
            self.metrics.inc(name, 0)
        # Remote config counts its outcomes (applied / rejected / rolled_back / superseded).
        for status in ("applied", "rejected", "rolled_back", "superseded"):
            self.metrics.inc("config_outcomes", 0, status=status)
        for name in ("buffered_records", "published_records", "acked_records"):
            self.metrics.inc(name, 0)

    @property
    def buffer_path(self) -> Path:
        p = Path(self.cfg.buffer.path)
        return p if p.is_absolute() else self.state_dir / p

    async def start(self) -> None:
        """Open the buffer, start the metrics endpoint, polling and the uplink.

        Raises only when the buffer cannot be opened: without it nothing could be kept.
        """
        # The buffer first: an unusable state directory is reported with its path right here.
        # (A push cannot move the buffer, so the configuration chosen below shares this one.)
        self.buffer = await Buffer.open(self.buffer_path, self.cfg.buffer)
        confirm_update = self.updater.start()  # this release may be on trial (lifecycle/)
        trial = None
        if self.local_doc is not None and self.cfg.remote_config.enabled:
            trial = self._init_remote_config()
            self.rules = Rules(self.cfg.rules)  # the configuration chosen at start may differ
        if self.cfg.metrics.listen:
            self.metrics_server = MetricsServer(
                self.cfg.metrics.listen, self.render_metrics, self.metrics
            )
            await self.metrics_server.start()
        self._start_uplink()
        self._supervise("loop_monitor", self._monitor_loop)
        if trial is not None:
            from gatewayd.remote_config.health import TrialWatch

            self._watch_next(TrialWatch(self.cfg))  # before the first poll: each one counts
        # Rule windows close by the clock too, not only on their point's next reading.
        self.poller.start(
            self.cfg.devices, maintenance=[(self.collect, 10.0), (self._tick_rules, 1.0)]
        )
        if self.remote is not None:
            remote = self.remote
            self._supervise("remote_config", lambda: remote.run(trial))
        if confirm_update:
            self._supervise("update_confirm", self.updater.confirm)
        log.info(
            "gateway_started version=%s config_version=%d devices=%d buffer=%s",
            __version__,
            self.cfg.version,
            len(self.cfg.devices),
            quote(self.buffer_path),
        )

    def _init_remote_config(self) -> Any:
        from gatewayd.remote_config import CommandHandler, ConfigManager, ConfigStore
        from gatewayd.remote_config.manager import startup_config

        assert self.local_doc is not None
        store = ConfigStore(self.state_dir / "config")
        start = startup_config(self.cfg, self.local_doc, store)
        local = self.cfg
        # Settings read only at start come from the local file, whatever a push once stored
        # (an older gatewayd let pushes set them; the buffer is already open with the local one).
        self.cfg = replace(
            (start.trial or start.lkg).cfg,  # parsed once, by startup_config
            buffer=local.buffer,
            metrics=local.metrics,
            gateway_id=local.gateway_id,
        )
        self.remote = ConfigManager(
            self, store, self.cfg, start.lkg, self._report_config, self.metrics, self.config_dir
        )
        self.remote.last_outcome = start.outcome
        if start.outcome is not None and start.new_outcome:
            self.metrics.inc("config_outcomes", status=start.outcome["status"])
        self.commands = CommandHandler(self, self._reply_command, self.metrics)
        return start.trial

    # -- live reconfiguration ----------------------------------------------------------------

    async def reconfigure(self, new: GatewayConfig, trial: bool = True) -> None:
        """Apply `new` live: restart changed devices and, if its settings changed, the uplink.
        `trial`: `wait_healthy` judges it next (a rollback is not judged)."""
        from gatewayd.remote_config.health import TrialWatch

        old = self.cfg
        self.cfg = new
        self._watch_next(TrialWatch(new, old, self._polling_good(old)) if trial else None)
        old_devs = {d.id: d for d in old.devices}
        new_devs = {d.id: d for d in new.devices}
        for dev_id, dev in old_devs.items():
            if new_devs.get(dev_id) != dev:
                await self.poller.remove(dev_id)
                self.device_health.forget(dev_id)
        places = {d.id: f"devices[{i}].driver" for i, d in enumerate(new.devices)}
        self.poller.add((d for d in new.devices if old_devs.get(d.id) != d), places)
        if new.logging != old.logging:
            logs.setup(new.logging.level, new.logging.format)
        if new.rules != old.rules:
            self.rules.reload(new.rules)  # unchanged rules keep their state
        if new.uplink != old.uplink:
            await self._stop_uplink()
            self._start_uplink()
        self.metrics.inc("config_reconfigures")
        log.info("gateway_reconfigured version=%d devices=%d", new.version, len(new.devices))

    def _polling_good(self, cfg: GatewayConfig) -> frozenset[str]:
        """Devices whose last poll was good (from the poller's per-device gauges)."""
        m = self.metrics
        return frozenset(
            d.id
            for d in cfg.devices
            if m.get("device_last_poll_good", device=d.id) > 0
            and m.get("device_last_poll_bad", device=d.id) == 0
        )

    async def wait_healthy(self, deadline_s: float) -> str | None:
        """None once the uplink is connected, every new or changed device completed a good poll
        and the unchanged ones keep their poll rate (see remote_config.health); else why not."""
        from gatewayd.remote_config.health import TrialWatch

        t0 = time.monotonic()
        watch, self._next_watch = self._next_watch or TrialWatch(self.cfg), None
        self._watches.add(watch)
        try:
            while True:
                uplink_ok = self.uplink is not None and self.uplink.connected
                problem = watch.problem(deadline_s)
                if uplink_ok and problem is None:
                    return None
                if time.monotonic() - t0 >= deadline_s:
                    if not uplink_ok:
                        why = self.uplink.last_error if self.uplink else None
                        return (
                            f"uplink not connected within {deadline_s:g} s ({why or 'no answer'})"
                        )
                    return problem
                await asyncio.sleep(0.1)
        finally:
            self._watches.discard(watch)

    def _watch_next(self, watch: TrialWatch | None) -> None:
        """Start feeding `watch` for the next `wait_healthy`, replacing one not yet taken up."""
        if self._next_watch is not None:
            self._watches.discard(self._next_watch)
        self._next_watch = watch
        if watch is not None:
            self._watches.add(watch)

    def request_restart(self, reason: str) -> None:
        """Stop as on SIGTERM, then exit with EXIT_RESTART: the supervisor starts `current`."""
        log.warning("restart_requested reason=%s", quote(reason))
        self.exit_code = EXIT_RESTART
        if self._stop_event is not None:
            self._stop_event.set()

    def state_changed(self) -> None:
        if self.uplink is not None:
            self.uplink.state_changed()

    def _start_uplink(self) -> None:
        assert self.buffer is not None
        self.uplink = Uplink(
            self.cfg.uplink,
            self.buffer,
            self.metrics,
            key_dir=self.config_dir,
            state=self._state,
            keyring=self.keyring,
            on_message=self._on_message,
            on_config=self._on_config,
            on_command=self._on_command,
        )
        self._uplink_task = self._supervise("uplink", self.uplink.run)

    async def _stop_uplink(self, drain_s: float = UPLINK_DRAIN_S) -> None:
        if self.uplink is not None:
            await self.uplink.stop(drain_s)
        task, self._uplink_task = self._uplink_task, None
        if task is not None:
            await asyncio.wait([task], timeout=TASKS_GRACE_S)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self._tasks.remove(task)

    # -- messages from the cloud -----------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> bool:
        """Claims a release's file chunks (lifecycle/update.py); the rest goes to the channel."""
        assert self.uplink is not None
        chunks = self.uplink.topics["commands"].rstrip("#") + "update/"
        if not topic.startswith(chunks):
            return False
        self.updater.on_chunk(topic[len(chunks) :], payload)
        return True

    def _on_config(self, payload: bytes) -> None:
        if self.remote is not None:
            self.remote.on_push(payload)
        elif self.uplink is not None:
            from gatewayd.remote_config.manager import refused_while_off

            outcome = refused_while_off(payload)
            if self._refused_off is None:  # warned once; the state document shows the latest
                log.warning("config_push_refused version=%s reason=%r", outcome["version"],
                            outcome["reason"])  # fmt: skip
            self._refused_off = outcome
            self.uplink.report_outcome(outcome)

    def _on_command(self, payload: bytes) -> None:
        if self.commands is not None:
            self.commands.on_message(self.uplink.channel.name if self.uplink else "", payload)

    def _report_config(self, outcome: dict[str, Any]) -> None:
        """Outcomes reach the cloud in the state document (see `_state`), and through the
        channel's own report where it has one."""
        if self.uplink is not None:
            self.uplink.report_outcome(outcome)

    def _reply_command(self, result: dict[str, Any]) -> None:
        if self.uplink is not None:
            self.uplink.reply_command(result)

    async def _state(self) -> dict[str, object]:
        """What the uplink publishes on the state topic (on change, at most once per second).

        `gatewayd fleet` reads it (gatewayd/fleet/state.py): keep its field names stable."""
        stats = await self.buffer.stats() if self.buffer is not None else None
        totals: dict[str, float] = {}  # Metrics.total of every name, in one pass
        for (name, _), v in self.metrics.counters.items():
            totals[name] = totals.get(name, 0) + v
        outcome = self.remote.last_outcome if self.remote is not None else self._refused_off
        recent = list(self.remote.recent_outcomes) if self.remote is not None else []
        return {
            **({"config": outcome} if outcome else {}),
            **({"config_recent": recent} if recent else {}),
            "config_version": self.cfg.version,
            "labels": dict(self.cfg.labels),  # `gatewayd fleet --select` matches on these
            "uplink_host": self.uplink.host if self.uplink is not None else None,
            "ts": now_ms(),  # when it was made: a retained document's age (fleet's "last seen")
            "health": "ok" if self.drivers or self.cfg.devices == () else "starting",
            "counters": {name: totals[name] for name in sorted(totals)},
            "buffer_depth": stats.depth if stats else None,
            "buffer_oldest_ts": stats.oldest_ts_ms if stats else None,
            "evictions": sum(stats.evicted.values()) if stats else 0,
            "devices": self.device_health.document(),
            # Per "<lane>/<reason>" (full, disk_full, age, corrupt, damaged, ...), and the corrupt
            # files moved aside and the records salvaged from them since the daemon started.
            "buffer_evicted": dict(sorted(stats.evicted.items())) if stats else {},
            "buffer_quarantined_files": stats.quarantined if stats else 0,
            "buffer_salvaged": stats.salvaged if stats else 0,
            "software": self.updater.document(),
            **({"device_key": self.keyring.document()} if self.keyring is not None else {}),
            # How long an outage starting now can last before eviction; null: nothing appended.
            "buffer_hours_left": (
                round(stats.hours_left, 2) if stats and stats.hours_left != float("inf") else None
            ),
        }

    def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a long-lived coroutine; if it raises, log, count and start it again."""

        async def keep() -> None:
            failures = 0
            while not self._stopping:
                try:
                    await run()
                    return
                except Exception as exc:
                    failures += 1
                    self.metrics.inc("task_restarts", task=name)
                    delay = exponential(failures, 0.5, 30.0)  # 1 s after the first crash
                    log.log(
                        logging.ERROR if failures == 1 else logging.DEBUG,
                        "task_crashed task=%s error=%s restarts=%d retry_in_s=%.1f",
                        name,
                        quote(f"{type(exc).__name__}: {exc}"),
                        failures,
                        delay,
                        exc_info=failures == 1,
                    )
                    await asyncio.sleep(delay)

        self.metrics.inc("task_restarts", 0, task=name)
        task = asyncio.get_running_loop().create_task(keep(), name=name)
        self._tasks.append(task)
        return task

    async def _monitor_loop(self) -> None:
        """Measure how late the loop wakes up: blocking work on it shows here first."""
        self.metrics.inc("loop_stalls", 0)
        stalls = 0
        while not self._stopping:
            t0 = time.monotonic()
            await asyncio.sleep(1.0)
            lag = max(0.0, time.monotonic() - t0 - 1.0)
            self.metrics.set("loop_lag_seconds", lag)
            if lag > self.metrics.get("loop_lag_max_seconds"):
                self.metrics.set("loop_lag_max_seconds", lag)
            if lag >= LOOP_STALL_S:
                stalls += 1
                self.metrics.inc("loop_stalls")
                log.log(
                    logging.WARNING if stalls == 1 or stalls % 100 == 0 else logging.DEBUG,
                    "loop_stalled lag_s=%.2f count=%d",
                    lag,
                    stalls,
                )

    async def _handle(self, group: PollGroup, readings: list[Reading]) -> None:
        """One poll's readings through the rules into the buffer (committed when this returns);
        a device going down or up is one event, stored beside them (not through the rules)."""
        for watch in self._watches:
            watch.observe(group, readings)
        events = self.device_health.observe(group, readings, self.drivers.get(group.device))
        dropped = self.rules.dropped
        records = self.rules.process(readings)
        self.metrics.inc("rules_dropped", self.rules.dropped - dropped)
        if events:
            records = events + records
            if self.uplink is not None:
                self.uplink.state_changed()
        await self._store(records)

    async def _tick_rules(self) -> None:
        await self._store(self.rules.tick(now_ms()))

    async def _store(self, records: list[Record]) -> None:
        if self.buffer is None:
            return
        # Every poll and the 1 s rules tick pass here: a step of the wall clock is seen within a
        # second, and stamps taken before it was set are corrected before the next append (and
        # so before any age expiry sees them).
        if (correction := self.clock.check()) is not None and correction:
            moved = await self.buffer.restamp(PLAUSIBLE_MS, correction)
            log.info("buffer_restamped records=%d correction_s=%.3f", moved, correction / 1000)
        if not records:
            return
        fix = self.clock.correction_ms
        if fix and (records[0].ts_ms < PLAUSIBLE_MS or records[-1].ts_ms < PLAUSIBLE_MS):
            # a poll that started before the clock was set and ended after
            records = [
                r._replace(ts_ms=r.ts_ms + fix) if r.ts_ms < PLAUSIBLE_MS else r for r in records
            ]
        try:
            await self.buffer.append(records)
        except Exception as exc:
            log.error("buffer_append_failed error=%s", quote(exc))
            self.metrics.inc("buffer_append_failures")
            return
        self.metrics.inc("buffered_records", len(records))

    async def collect(self) -> None:
        """Refresh the gauges that are read rather than counted (buffer, uplink, clock)."""
        m = self.metrics
        m.set("info", 1, version=__version__)
        m.set("config_version", self.cfg.version)
        m.set("start_time_seconds", self._started)
        m.set("clock_plausible", 1 if clock_plausible() else 0)
        m.total_from("clock_steps", self.clock.steps)
        # The rules keep running counts that a reload may restart: add what is new.
        for name, now in (
            ("rules_expression_errors", self.rules.expr_errors[0]),
            ("rules_late_readings", self.rules.late_readings),
        ):
            m.inc(name, max(0, now - self._rules_seen.get(name, 0)))
            self._rules_seen[name] = now
        if self.buffer is not None:
            st = await self.buffer.stats()
            m.set("buffer_depth", st.depth)
            m.set("buffer_bytes", st.bytes)
            m.set("buffer_file_bytes", st.file_bytes)
            m.set("buffer_inflight", st.inflight)
            m.total_from("buffer_quarantined_files", st.quarantined)
            m.total_from("buffer_commits", self.buffer.commits)
            oldest = (
                0.0 if st.oldest_ts_ms is None else max(0.0, time.time() - st.oldest_ts_ms / 1e3)
            )
            m.set("buffer_oldest_age_seconds", oldest)
            m.set("buffer_hours_left", st.hours_left)
            for lane in ("alarm", "event", "telemetry"):
                m.set("buffer_depth_lane", st.depth_by_lane.get(lane, 0), lane=lane)
            for key, n in st.evicted.items():
                lane, _, reason = key.partition("/")
                m.total_from("buffer_evicted_records", n, lane=lane, reason=reason)
            if not st.evicted:
                m.inc("buffer_evicted_records", 0, lane="telemetry", reason="full")
            m.total_from("buffer_quarantined_files", st.quarantined)
            m.total_from("buffer_salvaged_records", st.salvaged)
        up = self.uplink
        m.set("uplink_connected", 1 if up is not None and up.connected else 0)
        m.drop("uplink_last_error")
        if up is not None and up.last_error and not up.connected:
            m.set("uplink_last_error", 1, reason=up.last_error)

    async def render_metrics(self) -> str:
        await self.collect()
        return self.metrics.render()

    def request_reload(self) -> None:
        """SIGHUP: re-read the local file and apply it through the remote-config path."""
        from gatewayd.config import ConfigError, read_document

        if self.config_path is None or self.remote is None:
            log.warning(
                "reload_ignored reason=%s",
                "no_config_file" if self.config_path is None else "remote_config_disabled",
            )
            return
        try:
            doc = read_document(self.config_path)
        except ConfigError as exc:
            log.error("reload_refused error=%s", quote(exc))
            return
        self.remote.on_local(doc)

    async def run(self, stop: asyncio.Event) -> None:
        """Start, tell systemd we are ready, feed its watchdog, stop when `stop` is set."""
        self._stop_event = stop
        await self.start()
        sdnotify.notify(f"READY=1\nSTATUS={self.status_line()}")
        log.info("ready")
        # The watchdog is fed from this loop: a loop stalled by blocking work stops the pings and
        # systemd restarts the process.
        interval = sdnotify.watchdog_interval_s()
        tick = min(interval or 10.0, 10.0)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick)
                if interval:
                    sdnotify.notify(f"WATCHDOG=1\nSTATUS={self.status_line()}")
                else:
                    sdnotify.notify(f"STATUS={self.status_line()}")
        finally:
            sdnotify.notify("STOPPING=1\nSTATUS=stopping")
            await self.stop()

    def status_line(self) -> str:
        up = self.uplink
        if up is None:
            state = "starting"
        else:
            state = "connected" if up.connected else f"offline ({up.last_error or 'connecting'})"
        m = self.metrics
        return (
            f"uplink {state}; buffered {m.total('buffered_records'):.0f}, "
            f"acked {m.total('acked_records'):.0f}; driver crashes {m.total('driver_crashes'):.0f}"
        )

    async def stop(self) -> None:
        t0 = time.monotonic()
        self._stopping = True
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.poller.stop(POLL_GRACE_S)
        await self._stop_uplink(UPLINK_DRAIN_S)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TASKS_GRACE_S)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        depth = None
        if self.buffer is not None:
            with contextlib.suppress(Exception):
                depth = (await self.buffer.stats()).depth
            await self.buffer.close()
            self.buffer = None
        log.info(
            "gateway_stopped seconds=%.2f buffered=%.0f acked=%.0f left_in_buffer=%s",
            time.monotonic() - t0,
            self.metrics.total("buffered_records"),
            self.metrics.total("acked_records"),
            depth,
        )
