"""Properties of deadbands, hysteresis and windows over random signals (hypothesis)."""

from __future__ import annotations

from collections import defaultdict
from itertools import accumulate, pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from rules_support import configs, engine, feed, rule_toml

from gatewayd.reading import Lane
from gatewayd.rules import Rules

values_st = st.floats(-1e6, 1e6, allow_nan=False)
steps_ms = st.lists(st.integers(0, 5000), min_size=1, max_size=60)


def timeline(gaps: list[int]) -> list[int]:
    return list(accumulate(gaps))


@settings(max_examples=150, deadline=None)
@given(
    band=st.floats(0, 100),
    heartbeat_s=st.one_of(st.none(), st.integers(1, 20)),
    gaps=steps_ms,
    data=st.data(),
)
def test_deadband_outputs_are_a_band_apart_except_heartbeats(
    band: float, heartbeat_s: int | None, gaps: list[int], data: st.DataObject
) -> None:
    ts = timeline(gaps)
    vs = data.draw(st.lists(values_st, min_size=len(ts), max_size=len(ts)))
    hb = "" if heartbeat_s is None else f"\nheartbeat_s = {heartbeat_s}"
    rules = engine(f'kind = "deadband"\nabsolute = {band!r}{hb}')
    out = [(r.ts_ms, r.value) for r in feed(rules, zip(ts, vs, strict=True))]
    assert out[0] == (ts[0], vs[0]), "the first reading always passes"
    hb_ms = None if heartbeat_s is None else heartbeat_s * 1000
    for (t1, v1), (t2, v2) in pairwise(out):
        heartbeat = hb_ms is not None and t2 - t1 >= hb_ms
        assert heartbeat or (abs(v2 - v1) >= band and v2 != v1), (t1, v1, t2, v2)
    # and nothing that moved a band away from the last output was held back
    passed = set(out)
    last_t, last_v = out[0]
    for t, v in zip(ts[1:], vs[1:], strict=True):
        if (t, v) in passed:
            last_t, last_v = t, v
            continue
        assert abs(v - last_v) < band or v == last_v, (last_v, v)
        assert hb_ms is None or t - last_t < hb_ms


@settings(max_examples=100, deadline=None)
@given(percent=st.floats(0, 50), data=st.data())
def test_percent_deadband_outputs_are_a_band_of_the_last_output_apart(
    percent: float, data: st.DataObject
) -> None:
    vs = data.draw(st.lists(values_st, min_size=1, max_size=60))
    rules = engine(f'kind = "deadband"\npercent = {percent!r}')
    out = [r.value for r in feed(rules, enumerate(vs))]
    for v1, v2 in pairwise(out):
        assert v2 != v1 and abs(v2 - v1) >= abs(v1) * percent / 100  # type: ignore[operator]


@settings(max_examples=150, deadline=None)
@given(
    high=st.floats(-1000, 1000),
    hyst=st.floats(0.001, 100),
    start_raised=st.booleans(),
    delay_s=st.integers(0, 3),
    data=st.data(),
)
def test_no_alarm_chatter_for_a_signal_inside_the_hysteresis_band(
    high: float, hyst: float, start_raised: bool, delay_s: int, data: st.DataObject
) -> None:
    inside = st.floats(high - hyst, high, exclude_max=True).filter(lambda v: v < high)
    wiggle = data.draw(st.lists(inside, min_size=1, max_size=80))
    rules = engine(
        f'kind = "alarm"\nhigh = {high!r}\nhysteresis = {hyst!r}\n'
        f"on_delay_s = {delay_s}\noff_delay_s = {delay_s}"
    )
    prefix = [high + hyst] * (delay_s + 1) if start_raised else [high - 2 * hyst]
    first = feed(rules, [(i * 1000, v) for i, v in enumerate(prefix)])
    events = [r.reason.split(":")[0] for r in first if r.lane is Lane.ALARM]  # type: ignore[union-attr]
    assert events == (["raise"] if start_raised else [])
    t0 = len(prefix) * 1000
    later = feed(rules, [(t0 + i * 1000, v) for i, v in enumerate(wiggle)])
    assert [r for r in later if r.lane is Lane.ALARM] == []


@settings(max_examples=150, deadline=None)
@given(
    low=st.floats(-100, 0),
    hyst=st.floats(0, 20),
    data=st.data(),
)
def test_alarm_events_alternate_and_each_is_justified_by_its_value(
    low: float, hyst: float, data: st.DataObject
) -> None:
    high = low + 2 * hyst + data.draw(st.floats(0.001, 100))
    vs = data.draw(st.lists(st.floats(low - 50, high + 50), min_size=1, max_size=80))
    rules = engine(f'kind = "alarm"\nhigh = {high!r}\nlow = {low!r}\nhysteresis = {hyst!r}')
    out = feed(rules, enumerate(vs))
    by_limit: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in out:
        if r.lane is Lane.ALARM:
            event, name, _ = r.reason.split(":")  # type: ignore[union-attr]
            by_limit[name].append((event, r.value))  # type: ignore[arg-type]
    for name, events in by_limit.items():
        assert [e for e, _ in events] == ["raise", "clear"] * (len(events) // 2) + ["raise"] * (
            len(events) % 2
        ), "raise and clear alternate, starting with a raise"
        for event, v in events:
            if name == "r.high":
                assert v >= high if event == "raise" else v < high - hyst
            else:
                assert v <= low if event == "raise" else v > low + hyst


@settings(max_examples=100, deadline=None)
@given(seconds=st.integers(1, 10), gaps=steps_ms, data=st.data())
def test_windows_aggregate_every_reading_once_per_wall_clock_bucket(
    seconds: int, gaps: list[int], data: st.DataObject
) -> None:
    ts = timeline(gaps)
    vs = data.draw(st.lists(st.integers(-1000, 1000), min_size=len(ts), max_size=len(ts)))
    rules = Rules(
        configs(
            rule_toml(
                f'kind = "window"\nseconds = {seconds}\nemit = ["min", "max", "count", "last"]'
            )
        )
    )
    out = feed(rules, zip(ts, vs, strict=True)) + rules.tick(ts[-1] + seconds * 1000 + 1000)
    buckets: dict[int, list[int]] = defaultdict(list)
    for t, v in zip(ts, vs, strict=True):
        buckets[t - t % (seconds * 1000)].append(v)
    got: dict[int, dict[str, object]] = defaultdict(dict)
    for r in out:
        got[r.ts_ms][r.point.rsplit("/", 1)[1]] = r.value
    assert got == {
        start: {"min": min(b), "max": max(b), "count": len(b), "last": b[-1]}
        for start, b in buckets.items()
    }
