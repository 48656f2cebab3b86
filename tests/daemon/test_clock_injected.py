"""Clock steps with an injected clock, in-process and fast: the step detector, the marks on
readings taken before the clock is set, their correction in a real buffer file, and the
scheduler's invariants on the loop's monotonic clock."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from gatewayd.buffer import Store
from gatewayd.clock import PLAUSIBLE_MS, PLAUSIBLE_S, WallClock, clock_plausible
from gatewayd.config import BufferConfig, PointConfig
from gatewayd.drivers import PollGroup
from gatewayd.drivers.modbus.options import ModbusTcpOptions
from gatewayd.drivers.options import device_config
from gatewayd.metrics import Metrics
from gatewayd.polling import Poller
from gatewayd.reading import Quality, Reading, Record
from gatewayd.schedule import Scheduler
from gatewayd_sim.modbus import ModbusTcpSlave, constant

YEAR_S = 365 * 86400
NOW = PLAUSIBLE_S + 30 * 86400  # a plausible "now" for the injected wall clock


class Clocks:
    """An injected wall clock over a monotonic one that only ever moves forward."""

    def __init__(self, wall: float) -> None:
        self.mono = 1000.0
        self.offset = wall - self.mono

    def wall(self) -> float:
        return self.mono + self.offset

    def tick(self, s: float) -> None:
        self.mono += s

    def step(self, s: float) -> None:
        self.offset += s


def test_one_plausibility_date_for_clock_buffer_and_uplink() -> None:
    from gatewayd.buffer import eviction  # the buffer's expiry by age

    assert PLAUSIBLE_MS == PLAUSIBLE_S * 1000
    assert eviction.PLAUSIBLE_MS == PLAUSIBLE_MS
    assert clock_plausible(PLAUSIBLE_S) and not clock_plausible(PLAUSIBLE_S - 1)


@pytest.mark.parametrize(
    "step_s", [20.0, -20.0, 7 * 86400, -7 * 86400, 6 * YEAR_S, -6 * YEAR_S, -1.5]
)
def test_a_step_either_way_is_logged_once_with_its_size(
    step_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    c = Clocks(NOW + 6 * YEAR_S if step_s < -YEAR_S else NOW)
    clock = WallClock(c.wall, lambda: c.mono)
    caplog.set_level(logging.WARNING, "gatewayd.clock")
    for _ in range(3):
        c.tick(1.0)
        assert clock.check() is None
    c.step(step_s)
    for _ in range(5):
        c.tick(1.0)
        clock.check()
    steps = [r.getMessage() for r in caplog.records if "clock_stepped" in r.getMessage()]
    assert len(steps) == 1, steps
    assert f"step_s={step_s:.3f}" in steps[0]
    assert clock.steps == 1


def test_slew_below_a_second_is_no_step() -> None:
    c = Clocks(NOW)
    clock = WallClock(c.wall, lambda: c.mono)
    for _ in range(100):
        c.tick(1.0)
        c.step(0.01)  # NTP slewing
        clock.check()
    assert clock.steps == 0


def test_correction_once_the_clock_is_set_is_the_monotonic_offset() -> None:
    c = Clocks(PLAUSIBLE_S - 6 * YEAR_S)  # a Pi booted with the fake-hwclock of 2020
    clock = WallClock(c.wall, lambda: c.mono)
    assert not clock.plausible
    c.tick(3600)  # an hour of polling with the wrong clock
    taken_at = c.wall()  # a stamp taken then, and the true time it was taken
    true_at = taken_at + 6 * YEAR_S + 123.0
    assert clock.check() is None
    c.tick(10)
    c.step(6 * YEAR_S + 123.0)  # NTP
    correction = clock.check()
    assert correction is not None
    assert taken_at * 1000 + correction == pytest.approx(true_at * 1000, abs=1)
    assert clock.check() is None, "the correction is handed out once"
    assert clock.correction_ms == correction


def test_restamp_moves_unset_stamps_in_the_column_and_the_body(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.sqlite", BufferConfig(), now=lambda: NOW * 1000)
    early = PLAUSIBLE_MS - 6 * YEAR_S * 1000
    s.append(
        [
            Record("d/a", early, 1.0, Quality.UNCERTAIN, "clock_unsynced"),
            Record("d/b", early + 1, 2),
            Record("d/c", NOW * 1000, 3.5),
        ]
    )
    delta = 6 * YEAR_S * 1000 + 5
    assert s.restamp(PLAUSIBLE_MS, delta) == 2
    got = {e.record().point: e.record() for e in s.take(10, 1 << 20)}
    assert got["d/a"].ts_ms == early + delta and got["d/a"].reason == "clock_unsynced"
    assert got["d/b"].ts_ms == early + 1 + delta
    assert got["d/c"].ts_ms == NOW * 1000
    for e in s.peek(10, None):
        assert json.loads(e.body)["ts"] == e.record().ts_ms


def test_age_expiry_never_takes_a_stamp_from_before_the_clock_was_set(tmp_path: Path) -> None:
    """Before: once the clock was right, readings stamped 2020 were expired as `age`."""
    s = Store(tmp_path / "b.sqlite", BufferConfig(max_age_s=3600), now=lambda: NOW * 1000)
    early = PLAUSIBLE_MS - 6 * YEAR_S * 1000
    old = NOW * 1000 - 7200_000  # truly two hours old
    s.append([Record("d/a", early, 1.0), Record("d/b", old, 2.0), Record("d/c", early + 1, 3.0)])
    s.append([Record("d/d", NOW * 1000, 4.0)])  # an append runs the expiry
    st = s.snapshot()
    assert st.evicted == {"telemetry/age": 1}, st.evicted
    assert sorted(e.record().point for e in s.take(10, 1 << 20)) == ["d/a", "d/c", "d/d"]


def test_poller_marks_readings_taken_while_the_clock_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: readings stamped 2020 were delivered as good quality."""
    real_ns = time.time_ns
    shift = {"ns": -6 * YEAR_S * 10**9}
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + shift["ns"])

    async def scenario() -> list[Reading]:
        slave = await ModbusTcpSlave().start()
        slave.feed(1, "holding", 0, constant(7))
        got: list[Reading] = []

        async def sink(group: PollGroup, readings: list[Reading]) -> None:
            got.extend(readings)

        metrics = Metrics()
        poller = Poller(metrics, sink)
        dev = device_config(
            ModbusTcpOptions,
            id="a",
            driver="modbus_tcp",
            port=slave.port,
            interval_ms=50,
            points=(PointConfig(id="t", table="holding", address=0),),
        )
        poller.start([dev])
        while len(got) < 3:
            await asyncio.sleep(0.05)
        shift["ns"] = 0  # NTP sets the clock
        n = len(got)
        while len(got) < n + 3:
            await asyncio.sleep(0.05)
        await poller.stop()
        await slave.stop()
        return got

    got = asyncio.run(scenario())
    unset = [r for r in got if r.ts_ms < PLAUSIBLE_MS]
    after = [r for r in got if r.ts_ms >= PLAUSIBLE_MS]
    assert unset and after
    assert {(r.quality, r.reason) for r in unset} == {(Quality.UNCERTAIN, "clock_unsynced")}
    assert {(r.quality, r.reason) for r in after} == {(Quality.GOOD, None)}


# -- the scheduler, on the loop's monotonic clock --------------------------------------------


def test_scheduler_coalesces_a_late_loop_into_one_run_and_counts_what_it_missed() -> None:
    async def scenario() -> tuple[int, list[int]]:
        runs = 0
        missed: list[int] = []

        async def job() -> None:
            nonlocal runs
            runs += 1

        s = Scheduler()
        s.add("j", job, 0.05, first_in_s=0.0, on_miss=missed.append)
        await asyncio.sleep(0.01)
        before = runs
        time.sleep(0.5)  # the point: a loop blocked for ten periods
        await asyncio.sleep(0.01)
        after = runs
        await s.stop(1.0)
        return after - before, missed

    ran, missed = asyncio.run(scenario())
    assert ran == 1, "the missed due times became one run, not ten"
    assert sum(missed) >= 8


def test_scheduler_skips_while_a_run_is_going_and_stop_waits_for_it() -> None:
    async def scenario() -> tuple[int, int, int, bool]:
        started = finished = skips = 0

        async def slow() -> None:
            nonlocal started, finished
            started += 1
            await asyncio.sleep(0.3)
            finished += 1

        def skipped() -> None:
            nonlocal skips
            skips += 1

        s = Scheduler()
        s.add("slow", slow, 0.05, first_in_s=0.0, on_skip=skipped)
        await asyncio.sleep(0.2)
        cancelled = await s.stop(2.0)
        return started, finished, skips, cancelled == 0

    started, finished, skips, none_cancelled = asyncio.run(scenario())
    assert started == 1 and finished == 1, "one run at a time, and stop() let it finish"
    assert skips >= 2 and none_cancelled
