"""Poll groups on the monotonic scheduler (`schedule`), each device's driver supervised.

Invariants:
- at most one poll of a group runs at a time and missed runs are coalesced into one, so a slow
  device never piles up work; a run skipped because the previous one is still going is counted
  (`polls_skipped`), not queued; due times the loop was too late for are counted
  (`polls_missed`); a wall-clock step changes neither;
- a driver that raises, hangs past its deadline or cannot be built never stops the process or the
  other devices: it is logged (first at WARNING, repeats at DEBUG), counted, its points come out as
  BAD readings with reason `driver_error`, and it is rebuilt after a backoff;
- a reading stamped before the clock is plausible leaves the poll marked uncertain with reason
  `clock_unsynced` (bad ones keep their own reason); the check costs two comparisons per poll;
- a poll hands its readings to the sink (rules → buffer) before it ends, so `stop()`, which waits
  for the polls in flight, leaves nothing half-done;
- near the memory ceiling (`memory.MemoryGuard`) a poll due while another one runs is not made
  but counted (`polls_shed`): polls wait for each other instead of their readings piling up, and
  one poll can always run, so polling slows and never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from gatewayd.backoff import exponential
from gatewayd.clock import PLAUSIBLE_MS, UNSYNCED
from gatewayd.config import DeviceConfig
from gatewayd.drivers import Driver, PollGroup, load_driver, poll_groups
from gatewayd.logs import quote
from gatewayd.memory import MemoryGuard
from gatewayd.metrics import Key, Metrics, key
from gatewayd.reading import Quality, Reading, now_ms
from gatewayd.schedule import Run, Scheduler

log = logging.getLogger("gatewayd.polling")

Sink = Callable[[PollGroup, list[Reading]], Awaitable[None]]

DRIVER_ERROR = "driver_error"


def restart_delay_s(failures: int) -> float:
    """Backoff before rebuilding a driver after its n-th consecutive failure (0.5 s … 60 s)."""
    return exponential(failures - 1, 0.5, 60.0)


def poll_deadline_s(dev: DeviceConfig, group: PollGroup) -> float:
    # A safety net against a driver that never returns, far above any honest timeout chain
    # (one request per point, each bounded by the device timeout).
    return max(30.0, 2 * dev.timeout_s * len(group.points))


class DriverSlot:
    """One device's driver instance: built lazily, thrown away and rebuilt after a crash."""

    def __init__(
        self, dev: DeviceConfig, place: str, metrics: Metrics, live: dict[str, Driver]
    ) -> None:
        self.dev = dev
        self.place = place
        self.metrics = metrics
        self.live = live  # the poller's map of built drivers (commands write through it)
        self.driver: Driver | None = None
        self.failures = 0  # consecutive
        self._retry_at = 0.0  # monotonic

    def get(self) -> Driver | None:
        """The driver, building it if it is due; None while it is down."""
        if self.driver is None and time.monotonic() >= self._retry_at:
            try:
                self.driver = load_driver(self.dev.driver, self.place)(self.dev)
            except Exception as exc:  # a plugin's constructor is not allowed to stop the gateway
                self._failed("driver_start_failed", exc)
                return None
            self.live[self.dev.id] = self.driver
            if self.failures:
                self.metrics.inc("driver_restarts", device=self.dev.id)
                log.info("driver_restarted device=%s after=%d", self.dev.id, self.failures)
        return self.driver

    async def crashed(self, exc: BaseException) -> None:
        driver, self.driver = self.driver, None
        self.live.pop(self.dev.id, None)
        self._failed("driver_crashed", exc)
        if driver is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(driver.close(), 2.0)

    def ok(self) -> None:
        if self.failures:
            log.info("driver_recovered device=%s failures=%d", self.dev.id, self.failures)
        self.failures = 0

    def _failed(self, event: str, exc: BaseException) -> None:
        self.failures += 1
        delay = restart_delay_s(self.failures)
        self._retry_at = time.monotonic() + delay
        self.metrics.inc("driver_crashes", device=self.dev.id)
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(
            level,
            "%s device=%s driver=%s error=%s streak=%d retry_in_s=%.1f",
            event,
            self.dev.id,
            self.dev.driver,
            quote(_describe(exc)),
            self.failures,
            delay,
            exc_info=self.failures == 1 and not isinstance(exc, TimeoutError),
        )

    async def close(self) -> None:
        driver, self.driver = self.driver, None
        self.live.pop(self.dev.id, None)
        if driver is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(driver.close(), 1.0)


class Poller:
    """Owns the scheduler and one DriverSlot per device; devices can be added and removed live
    (a new configuration restarts only the devices that changed)."""

    def __init__(self, metrics: Metrics, sink: Sink, guard: MemoryGuard | None = None) -> None:
        self.metrics = metrics
        self.sink = sink
        self.guard = guard
        self._running = 0  # polls between their start and their readings stored
        self._sheds: dict[str, int] = {}
        self.slots: dict[str, DriverSlot] = {}
        self.drivers: dict[str, Driver] = {}  # the built ones, by device id
        # device -> monotonic time of its last poll the driver answered (crashes do not count)
        self.polled_at: dict[str, float] = {}
        self._scheduler: Scheduler | None = None
        self._groups: dict[str, list[str]] = {}  # device -> its poll groups' job names
        self._skips: dict[str, int] = {}
        self._pipeline_errors: dict[str, int] = {}
        self._keys: dict[str, _DeviceKeys] = {}  # metric keys of each device's polls

    def start(
        self,
        devices: Iterable[DeviceConfig],
        maintenance: Sequence[tuple[Run, float]] = (),
    ) -> None:
        """Start polling the devices' groups, and the maintenance jobs (coroutine, period in
        seconds, first run one period from now)."""
        self._scheduler = Scheduler()
        for i, (job, period_s) in enumerate(maintenance):
            self._scheduler.add(f"maintenance-{i}", job, period_s)
        self.add(devices)

    def add(self, devices: Iterable[DeviceConfig], places: Mapping[str, str] | None = None) -> None:
        """Build each device's driver (a failure is counted, not raised) and schedule its groups
        from now on. `places` names each device's config path for errors (default: its order)."""
        assert self._scheduler is not None, "start() first"
        for i, dev in enumerate(devices):
            place = (places or {}).get(dev.id, f"devices[{i}].driver")
            slot = self.slots[dev.id] = DriverSlot(dev, place, self.metrics, self.drivers)
            slot.get()
            for name in ("polls", "poll_failures", "driver_crashes", "polls_missed"):
                self.metrics.inc(name, 0, device=dev.id)
            self.metrics.inc("pipeline_errors", 0, device=dev.id)
            groups = self._groups[dev.id] = []
            for group in poll_groups(dev):
                self.metrics.inc("polls_skipped", 0, device=dev.id, group=group.name)
                self.metrics.inc("polls_shed", 0, device=dev.id, group=group.name)
                self._scheduler.add(
                    group.name,
                    functools.partial(self._poll, group),
                    group.interval_ms / 1000,
                    first_in_s=0.0,
                    on_skip=functools.partial(self._skipped, group),
                    on_miss=functools.partial(self._missed, group),
                )
                groups.append(group.name)

    def _skipped(self, group: PollGroup) -> None:
        n = self._skips[group.name] = self._skips.get(group.name, 0) + 1
        self.metrics.inc("polls_skipped", device=group.device, group=group.name)
        if n == 1 or n % 100 == 0:  # a slow device: say so, then every 100th skip
            log.warning(
                "poll_skipped group=%s reason=previous_poll_running count=%d", group.name, n
            )

    def _missed(self, group: PollGroup, n: int) -> None:  # the loop was a period or more late
        self.metrics.inc("polls_missed", n, device=group.device)

    async def remove(self, dev_id: str) -> None:
        """Unschedule a device's groups and close its driver; a poll in flight ends on its own."""
        for name in self._groups.pop(dev_id, []):
            if self._scheduler is not None:
                self._scheduler.remove(name)
        self.polled_at.pop(dev_id, None)
        self._keys.pop(dev_id, None)
        slot = self.slots.pop(dev_id, None)
        if slot is not None:
            await slot.close()

    async def _poll(self, group: PollGroup) -> None:
        slot = self.slots.get(group.device)
        if slot is None:  # removed by a new configuration while this run was being submitted
            return
        if self._running and self.guard is not None and self.guard.over():
            self._shed(group)
            return
        self._running += 1
        try:
            await self._poll_and_store(group, slot)
        finally:
            self._running -= 1

    def _shed(self, group: PollGroup) -> None:
        n = self._sheds[group.name] = self._sheds.get(group.name, 0) + 1
        self.metrics.inc("polls_shed", device=group.device, group=group.name)
        if n == 1 or n % 1000 == 0:
            log.warning(
                "poll_shed group=%s reason=memory_ceiling limit_mb=%d count=%d",
                group.name,
                (self.guard.limit_bytes >> 20) if self.guard else 0,
                n,
            )

    async def _poll_and_store(self, group: PollGroup, slot: DriverSlot) -> None:
        readings = await self._read(group, slot)
        try:
            await self.sink(group, readings)
        except Exception as exc:  # a rules or buffer bug loses this poll, not the scheduler
            self.metrics.inc("pipeline_errors", device=group.device)
            n = self._pipeline_errors[group.name] = self._pipeline_errors.get(group.name, 0) + 1
            log.log(
                logging.ERROR if n == 1 or n % 100 == 0 else logging.DEBUG,
                "pipeline_failed group=%s error=%s count=%d",
                group.name,
                quote(_describe(exc)),
                n,
                exc_info=n == 1,
            )

    async def _read(self, group: PollGroup, slot: DriverSlot) -> list[Reading]:
        driver = slot.get()
        t0 = time.monotonic()
        if driver is None:
            readings = _bad(group, DRIVER_ERROR)
        else:
            try:
                # asyncio.timeout, not wait_for: no task of its own per poll
                async with asyncio.timeout(poll_deadline_s(slot.dev, group)):
                    readings = await driver.poll(group)
            except Exception as exc:  # a driver bug must not stop the scheduler or other devices
                await slot.crashed(exc)
                readings = _bad(group, DRIVER_ERROR)
            else:
                slot.ok()
                self.polled_at[group.device] = time.monotonic()
                # The driver's own counts (requests, faults by reason, retries) as counters.
                for kind, n in driver.counters.items():
                    self.metrics.total_from("driver_events", n, device=group.device, kind=kind)
        if readings and (readings[0].ts_ms < PLAUSIBLE_MS or readings[-1].ts_ms < PLAUSIBLE_MS):
            readings = [_unsynced(r) for r in readings]
        self._account(group.device, readings, time.monotonic() - t0)
        return readings

    def _account(self, device: str, readings: list[Reading], elapsed: float) -> None:
        """The poll's metrics: counters, the duration histogram and the last-poll gauges, by
        keys made once per device (a poll costs a few dict updates, never a scan of all gauges)."""
        keys = self._keys.get(device)
        if keys is None:
            keys = self._keys[device] = _DeviceKeys(device)
        m = self.metrics
        counters, gauges = m.counters, m.gauges
        bad_readings = [r for r in readings if r.quality is Quality.BAD]
        bad = len(bad_readings)
        get = counters.get
        counters[keys.polls] = get(keys.polls, 0) + 1
        if readings and bad == len(readings):
            counters[keys.failures] = get(keys.failures, 0) + 1
        counters[keys.readings] = get(keys.readings, 0) + len(readings)
        counters[keys.bad] = get(keys.bad, 0) + bad
        m.observe("poll_duration_seconds", elapsed, device=device)
        gauges[keys.last_ts] = time.time()
        gauges[keys.last_good] = len(readings) - bad
        gauges[keys.last_bad] = bad
        reasons = tuple(sorted({str(r.reason) for r in bad_readings})[:3]) if bad_readings else ()
        if reasons != keys.reasons:  # the last poll's reasons go, this one's come
            for reason in keys.reasons:
                gauges.pop(keys.reason(reason), None)
            keys.reasons = reasons
        for reason in reasons:
            gauges[keys.reason(reason)] = 1

    async def stop(self, grace_s: float = 1.5) -> None:
        """Stop firing polls, let the ones in flight finish (up to `grace_s`), close drivers."""
        sched, self._scheduler = self._scheduler, None
        if sched is not None:
            cancelled = await sched.stop(grace_s)
            if cancelled:
                log.warning("polls_cancelled_at_stop count=%d", cancelled)
        # Drivers close together, bounded: a device that hangs on close must not eat the budget.
        await asyncio.gather(*(slot.close() for slot in self.slots.values()))


class _DeviceKeys:
    """A device's poll metric keys (gatewayd.metrics.key), made once."""

    __slots__ = (
        "bad",
        "device",
        "failures",
        "last_bad",
        "last_good",
        "last_ts",
        "polls",
        "readings",
        "reasons",
    )

    def __init__(self, device: str) -> None:
        self.device = device
        self.polls = key("polls", device=device)
        self.failures = key("poll_failures", device=device)
        self.readings = key("readings", device=device)
        self.bad = key("readings_bad", device=device)
        self.last_ts = key("device_last_poll_timestamp_seconds", device=device)
        self.last_good = key("device_last_poll_good", device=device)
        self.last_bad = key("device_last_poll_bad", device=device)
        self.reasons: tuple[str, ...] = ()  # of the last poll's bad readings, as gauges

    def reason(self, reason: str) -> Key:
        return key("device_last_bad_reason", device=self.device, reason=reason)


def _bad(group: PollGroup, reason: str) -> list[Reading]:
    ts = now_ms()
    return [Reading(f"{group.device}/{p.id}", ts, None, Quality.BAD, reason) for p in group.points]


def _unsynced(r: Reading) -> Reading:
    """Mark a reading stamped while the wall clock was not set (see `clock`)."""
    if r.ts_ms >= PLAUSIBLE_MS or r.quality is Quality.BAD:
        return r
    return r._replace(quality=Quality.UNCERTAIN, reason=UNSYNCED)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "hung (no answer within the poll deadline)"
    text = str(exc).replace("\n", " ")[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
