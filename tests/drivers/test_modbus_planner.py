"""The request planner: every point covered, no request over the limit, never more requests than
Telegraf's shrink/rearrange on the same points; exception 02 on a merged read splits it, and the
split is merged again once the device answers its parts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_env import STEADY_S, device, group, point, tcp_slave
from telegraf_planner import telegraf_requests

from gatewayd.config import PointConfig
from gatewayd.drivers.modbus import ModbusDriver, plan_requests
from gatewayd.drivers.modbus.planner import REMERGE_MAX, GroupPlan
from gatewayd.drivers.modbus.types import register_count
from gatewayd.reading import Quality
from gatewayd_sim.modbus.regmap import load_map

_TYPES = {"uint16": 1, "int32": 2, "float64": 4}


@st.composite
def points(draw: st.DrawFn) -> list[PointConfig]:
    table = draw(st.sampled_from(["holding", "input", "coil"]))
    n = draw(st.integers(1, 25))
    out = []
    for i in range(n):
        addr = draw(st.integers(0, 600))
        if table == "coil":
            out.append(PointConfig(id=f"p{i}", table="coil", address=addr, type="bool"))
        else:
            t = draw(st.sampled_from(list(_TYPES)))
            out.append(PointConfig(id=f"p{i}", table=table, address=addr, type=t))  # type: ignore[arg-type]
    return out


@settings(max_examples=300, deadline=None)
@given(pts=points(), max_gap=st.integers(0, 40), limit=st.sampled_from([8, 125]))
def test_plan_covers_every_point_within_limit_and_beats_telegraf(
    pts: list[PointConfig], max_gap: int, limit: int
) -> None:
    bits = pts[0].table == "coil"
    lim = 2000 if bits else limit
    plan = plan_requests(pts, max_gap=max_gap, max_registers=limit)
    covered = [p.id for r in plan for p in r.points]
    assert sorted(covered) == sorted(p.id for p in pts), "each point in exactly one request"
    for r in plan:
        assert 1 <= r.count <= lim
        for p in r.points:
            assert r.address <= p.address and p.address + register_count(p) <= r.address + r.count
    fields = [(p.address, register_count(p)) for p in pts]
    for strategy in ("shrink", "rearrange"):
        assert len(plan) <= len(telegraf_requests(fields, lim, strategy)), strategy


def test_gap_option_bridges_only_small_holes() -> None:
    pts = [point("a", 0), point("b", 5), point("c", 30)]
    assert [(r.address, r.count) for r in plan_requests(pts, max_gap=4)] == [(0, 6), (30, 1)]
    assert [(r.address, r.count) for r in plan_requests(pts, max_gap=3)] == [
        (0, 1),
        (5, 1),
        (30, 1),
    ]
    assert [(r.address, r.count) for r in plan_requests(pts, max_gap=40)] == [(0, 31)]


def test_exception_02_splits_merged_read_and_remembers() -> None:
    async def body() -> None:
        async with tcp_slave({0: 10, 1: 11, 20: 20, 21: 21}) as slave:
            slave.unit(1).defined = {0, 1, 20, 21}  # the hole 2..19 does not exist
            pts = [point("a", 0), point("b", 1), point("c", 20), point("d", 21)]
            drv = ModbusDriver(device(slave.port, pts, max_gap=20, timeout_s=STEADY_S))
            g = group(drv.device)
            first = await drv.poll(g)
            assert [(r.value, r.quality) for r in first] == [
                (v, Quality.GOOD) for v in (10, 11, 20, 21)
            ]
            assert drv.counters["splits"] == 1
            assert drv.requests_per_group[g.name] == 2
            asked = slave.requests
            second = await drv.poll(g)
            assert [r.value for r in second] == [10, 11, 20, 21]
            assert slave.requests - asked == 2, "the split is remembered: no refused read again"
            await drv.close()

    asyncio.run(body())


def test_exception_02_on_one_register_costs_only_its_point() -> None:
    async def body() -> None:
        async with tcp_slave({0: 10, 1: 11, 2: 12}) as slave:
            slave.unit(1).defined = {0, 2}
            pts = [point("a", 0), point("b", 1), point("c", 2)]
            drv = ModbusDriver(device(slave.port, pts, timeout_s=STEADY_S))
            rs = await drv.poll(group(drv.device))
            assert [(r.value, r.reason) for r in rs] == [
                (10, None),
                (None, "exception_02"),
                (12, None),
            ]
            await drv.close()

    asyncio.run(body())


def test_map_file_holes_and_faults_drive_split_and_busy_retry() -> None:
    async def body() -> None:
        async with tcp_slave() as slave:
            load_map(slave, Path(__file__).parent.parent / "fixtures" / "faulty_map.toml")
            pts = [point("a", 0), point("b", 40, type="int32")]
            dev = device(slave.port, pts, max_gap=50, busy_delay_s=0.01, timeout_s=STEADY_S)
            drv = ModbusDriver(dev)
            rs = await drv.poll(group(drv.device))
            assert [(r.value, r.quality) for r in rs] == [(100, Quality.GOOD), (-5, Quality.GOOD)]
            assert (drv.counters["busy_retries"], drv.counters["splits"]) == (2, 1)
            await drv.close()

    asyncio.run(body())


def test_stray_exception_02_split_merges_again_after_good_polls() -> None:
    async def body() -> None:
        async with tcp_slave({a: 100 + a for a in range(45)}) as slave:
            pts = [point(f"p{a}", a) for a in range(45)]
            drv = ModbusDriver(device(slave.port, pts, timeout_s=STEADY_S))
            g = group(drv.device)
            assert drv.requests_per_group == {}
            await drv.poll(g)
            assert drv.requests_per_group[g.name] == 1
            slave.faults(1).__dict__.update(exception=2, times=1)  # one stray refusal
            per_poll = []
            for _ in range(20):
                asked = slave.requests
                rs = await drv.poll(g)
                assert [(r.value, r.quality) for r in rs] == [
                    (100 + a, Quality.GOOD) for a in range(45)
                ]
                per_poll.append(slave.requests - asked)
            assert per_poll[0] == 1 + 45, "refused, then split into single points"
            back = per_poll.index(1)
            assert back <= 1 + 8, f"merged again after a few good polls: {per_poll}"
            assert set(per_poll[back:]) == {1}, "and it stays merged"
            assert drv.requests_per_group[g.name] == 1
            await drv.close()

    asyncio.run(body())


def test_real_hole_is_tried_merged_again_ever_less_often() -> None:
    async def body() -> None:
        async with tcp_slave({0: 10, 1: 11, 20: 20, 21: 21}) as slave:
            slave.unit(1).defined = {0, 1, 20, 21}  # a hole the device never fills
            pts = [point("a", 0), point("b", 1), point("c", 20), point("d", 21)]
            drv = ModbusDriver(device(slave.port, pts, max_gap=20, timeout_s=STEADY_S))
            g = group(drv.device)
            asked = slave.requests
            for _ in range(60):
                rs = await drv.poll(g)
                assert [r.value for r in rs] == [10, 11, 20, 21]
            # Tried merged at polls 1, 10, 27 and 60 (waits 8, 16, 32): one extra request each.
            assert drv.counters["splits"] == 4
            assert slave.requests - asked == 60 * 2 + 4
            await drv.close()

    asyncio.run(body())


@settings(max_examples=200, deadline=None)
@given(
    pts=points(),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 1000), st.booleans()), max_size=60),
)
def test_group_plan_covers_every_point_once_and_returns_to_the_fewest_requests(
    pts: list[PointConfig], steps: list[tuple[bool, int, bool]]
) -> None:
    base = plan_requests(pts, max_gap=20)
    plan = GroupPlan(list(base))

    def covered() -> list[int]:
        return sorted(id(p) for r in plan.requests for p in r.points)

    everyone = sorted(id(p) for r in base for p in r.points)
    for split, pick, fault in steps:
        faulted = []
        if split:  # the device refuses one request with exception 02
            req = plan.requests[pick % len(plan.requests)]
            plan.split(req)
            faulted.append(req)
        if fault:  # and another one fails this poll
            faulted.append(plan.requests[pick * 7 % len(plan.requests)])
        plan.end_poll(faulted)
        assert covered() == everyone, "every point in exactly one request"
    for _ in range(2 * REMERGE_MAX):  # the device behaves from now on
        if len(plan.requests) == len(base):
            break
        plan.end_poll([])
    assert [(r.table, r.address, r.count) for r in plan.requests] == [
        (r.table, r.address, r.count) for r in base
    ]
