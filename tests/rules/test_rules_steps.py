"""Each rule kind against sequences computed by hand."""

from __future__ import annotations

import pytest
from rules_support import P, alarms, configs, engine, feed, rule_toml, telemetry, values

from gatewayd.config import example_path, load
from gatewayd.reading import Lane, Quality, Reading, Record
from gatewayd.rules import Rules


def test_points_without_rules_pass_through_unchanged() -> None:
    rules = engine('kind = "scale"\nfactor = 2', points='["pump-*/pressure"]')
    readings = [
        Reading("boiler/flow", 1, 3.5),
        Reading("boiler/flow", 2, None, Quality.BAD, "timeout"),
        Reading("boiler/name", 3, "text"),
    ]
    assert rules.process(readings) == [Record.of(r) for r in readings]


def test_scale_and_offset() -> None:
    rules = engine('kind = "scale"\nfactor = 0.1\noffset = 2')
    assert values(feed(rules, [(0, 0), (1, 10), (2, 100)])) == [2.0, 3.0, 12.0]


def test_unit_conversion() -> None:
    f_to_c = engine('kind = "convert"\nfrom = "degF"\nto = "degC"')
    assert values(feed(f_to_c, [(0, 212), (1, 32), (2, -40)])) == pytest.approx([100, 0, -40])
    bar_to_psi = engine('kind = "convert"\nfrom = "bar"\nto = "psi"')
    assert values(feed(bar_to_psi, [(0, 1.0)])) == pytest.approx([14.5038], rel=1e-5)
    kw_to_w = engine('kind = "convert"\nfrom = "kW"\nto = "W"')
    assert values(feed(kw_to_w, [(0, 2.5)])) == [2500.0]


def test_clamp_and_round() -> None:
    rules = engine('kind = "clamp"\nmin = 0\nmax = 10', 'kind = "round"\ndigits = 1')
    assert values(feed(rules, [(0, -5), (1, 5.26), (2, 15)])) == [0, 5.3, 10]
    to_int = engine('kind = "round"')
    out = values(feed(to_int, [(0, 2.6)]))
    assert out == [3] and type(out[0]) is int


def test_text_and_bad_readings_skip_transforms() -> None:
    rules = engine('kind = "scale"\nfactor = 10')
    out = rules.process([Reading(P, 1, "on"), Reading(P, 2, None, Quality.BAD, "timeout")])
    assert [(r.value, r.quality, r.reason) for r in out] == [
        ("on", Quality.GOOD, None),
        (None, Quality.BAD, "timeout"),
    ]


def test_expression_transform() -> None:
    rules = engine('kind = "expr"\nexpr = "value * 0.1 + 2"')
    assert values(feed(rules, [(0, 0), (1, 10), (2, 100)])) == [2.0, 3.0, 12.0]


def test_expression_sees_prev_and_dt() -> None:
    rate = engine('kind = "expr"\nexpr = "(value - prev) / dt if dt > 0 else 0"')
    assert values(feed(rate, [(0, 0), (2000, 10), (4000, 30)])) == [0, 5.0, 10.0]


def test_expression_reads_other_points() -> None:
    rules = engine('kind = "expr"\nexpr = "value + point(\'boiler/flow\')"')
    first = feed(rules, [(0, 3)])
    assert [(r.value, r.quality, r.reason) for r in first] == [
        (None, Quality.BAD, "expr_error:NoValue")
    ]
    assert values(feed(rules, [(1, 7)], point="boiler/flow")) == [7]
    assert values(feed(rules, [(2, 3)])) == [10.0]


def test_expression_failure_marks_only_that_reading_bad() -> None:
    rules = engine('kind = "expr"\nexpr = "1 / value"', 'kind = "scale"\nfactor = 2')
    out = feed(rules, [(0, 0), (1, 4)])
    assert [(r.value, r.quality, r.reason) for r in out] == [
        (None, Quality.BAD, "expr_error:ZeroDivisionError"),
        (0.5, Quality.GOOD, None),
    ]
    assert rules.expr_errors == [1]


def test_deadband_absolute_with_heartbeat() -> None:
    rules = engine('kind = "deadband"\nabsolute = 0.5\nheartbeat_s = 10')
    seq = [(0, 10.0), (1000, 10.3), (2000, 10.5), (3000, 10.1), (4000, 10.0), (5000, 10.2)]
    seq += [(14000, 10.2), (15000, 10.3)]
    assert telemetry(feed(rules, seq)) == [(0, 10.0), (2000, 10.5), (4000, 10.0), (14000, 10.2)]


def test_deadband_percent_of_last_value_passed() -> None:
    rules = engine('kind = "deadband"\npercent = 10')
    seq = [(0, 100), (1, 109), (2, 110), (3, 100), (4, 98), (5, 0), (6, 0)]
    assert values(feed(rules, seq)) == [100, 110, 98, 0]


def test_report_by_exception_passes_every_change_of_numbers_and_text() -> None:
    rules = engine('kind = "deadband"\nabsolute = 0')
    assert values(feed(rules, enumerate([1, 1, 2, 2, 1]))) == [1, 2, 1]
    text = engine('kind = "deadband"\nabsolute = 0')
    assert values(feed(text, enumerate(["on", "on", "off", "off", "on"]))) == ["on", "off", "on"]


def test_deadband_passes_the_first_good_reading_after_a_bad_one() -> None:
    rules = engine('kind = "deadband"\nabsolute = 1')
    out = rules.process(
        [
            Reading(P, 0, 5.0),
            Reading(P, 1, None, Quality.BAD, "timeout"),
            Reading(P, 2, 5.0),
            Reading(P, 3, 5.0),
        ]
    )
    assert [(r.ts_ms, r.quality) for r in out] == [(0, "good"), (1, "bad"), (2, "good")]


def test_rate_limit_keeps_a_minimum_interval() -> None:
    rules = engine('kind = "rate_limit"\nmin_interval_s = 5')
    seq = [(0, 1), (1000, 2), (4999, 3), (5000, 4), (6000, 5), (10000, 6), (11000, 7)]
    assert values(feed(rules, seq)) == [1, 4, 6]
    assert rules.dropped == 4
    # a clock stepped backwards restarts the interval rather than silencing the point
    assert values(feed(rules, [(3000, 8), (4000, 9)])) == [8]


def test_keep_and_drop_by_condition() -> None:
    keep = engine('kind = "keep"\nwhen = "value > 0"')
    assert values(feed(keep, enumerate([-1, 0, 3, 5]))) == [3, 5]
    drop = engine('kind = "drop"\nwhen = "value == 0"')
    assert values(feed(drop, enumerate([0, 1, 0, 2]))) == [1, 2]
    changes = engine('kind = "keep"\nwhen = "value != prev"')
    assert values(feed(changes, enumerate([1, 1, 2, 2, 3]))) == [2, 3]


def test_quality_step_drops_or_passes() -> None:
    readings = [
        Reading(P, 0, 1.0),
        Reading(P, 1, None, Quality.BAD, "timeout"),
        Reading(P, 2, 2.0, Quality.UNCERTAIN),
    ]
    drop_bad = engine('kind = "quality"')
    assert [r.ts_ms for r in drop_bad.process(readings)] == [0, 2]
    strict = engine('kind = "quality"\nbad = "drop"\nuncertain = "drop"')
    assert [r.ts_ms for r in strict.process(readings)] == [0]
    lenient = engine('kind = "quality"\nbad = "pass"')
    assert [r.ts_ms for r in lenient.process(readings)] == [0, 1, 2]


WINDOW = 'kind = "window"\nseconds = 10\nemit = ["min", "max", "mean", "count", "last"]'


def test_window_emits_aggregates_when_the_next_window_begins() -> None:
    rules = engine(WINDOW)
    assert feed(rules, [(3000, 1.0), (7000, 3.0), (9999, 2.0)]) == []
    out = feed(rules, [(12000, 5.0)])
    assert [(r.point, r.ts_ms, r.value) for r in out] == [
        (f"{P}/min", 0, 1.0),
        (f"{P}/max", 0, 3.0),
        (f"{P}/mean", 0, 2.0),
        (f"{P}/count", 0, 3),
        (f"{P}/last", 0, 2.0),
    ]


def test_window_closes_by_the_clock_after_its_grace() -> None:
    rules = engine(WINDOW)
    feed(rules, [(12000, 5.0), (15000, 7.0)])
    assert rules.tick(20999) == []  # end 20000 + grace 1 s
    out = rules.tick(21000)
    assert [(r.point, r.ts_ms, r.value) for r in out] == [
        (f"{P}/min", 10000, 5.0),
        (f"{P}/max", 10000, 7.0),
        (f"{P}/mean", 10000, 6.0),
        (f"{P}/count", 10000, 2),
        (f"{P}/last", 10000, 7.0),
    ]
    assert rules.tick(60000) == []
    assert feed(rules, [(19500, 1.0)]) == [], "late for a window already closed"
    assert rules.late_readings == 1


def test_window_is_aligned_to_wall_clock_boundaries() -> None:
    rules = engine('kind = "window"\nseconds = 60\nemit = ["count"]')
    minute = 1_764_000_000_000  # a whole minute since the epoch
    t0 = minute + 37_000
    out = feed(rules, [(t0, 1), (t0 + 22_000, 2), (t0 + 23_000, 3)])  # the last starts a minute
    assert [(r.ts_ms, r.value) for r in out] == [(minute, 2)]
    assert rules.tick(minute + 120_999) == []
    assert [(r.ts_ms, r.value) for r in rules.tick(minute + 121_000)] == [(minute + 60_000, 1)]


def test_window_marks_aggregates_of_bad_readings() -> None:
    rules = engine('kind = "window"\nseconds = 10\nemit = ["mean", "count"]')
    rules.process([Reading(P, 1000, 4.0), Reading(P, 2000, None, Quality.BAD, "timeout")])
    some = rules.tick(11000)
    assert [(r.value, r.quality, r.reason) for r in some] == [
        (4.0, "uncertain", "some_bad_readings"),
        (1, "uncertain", "some_bad_readings"),
    ]
    rules.process([Reading(P, 12000, None, Quality.BAD, "timeout")])
    only_bad = rules.tick(21000)
    assert [(r.value, r.quality, r.reason) for r in only_bad] == [
        (None, "bad", "no_good_readings"),
        (0, "bad", "no_good_readings"),
    ]


def test_steps_after_a_window_apply_to_each_aggregate() -> None:
    rules = engine(
        'kind = "window"\nseconds = 10\nemit = ["min", "max"]',
        'kind = "alarm"\nhigh = 50',
        'kind = "route"\nsubfolder = "stats"',
    )
    feed(rules, [(1000, 10.0), (2000, 60.0)])
    out = rules.tick(11000)
    assert [(r.point, r.value, r.reason, r.lane, r.subfolder) for r in out] == [
        (f"{P}/min", 10.0, None, Lane.TELEMETRY, "stats"),
        (f"{P}/max", 60.0, "raise:r.high:warning", Lane.ALARM, None),
        (f"{P}/max", 60.0, None, Lane.TELEMETRY, "stats"),
    ]


def test_high_alarm_with_hysteresis() -> None:
    rules = engine('kind = "alarm"\nhigh = 100\nhysteresis = 5')
    seq = list(enumerate([90, 100, 99, 96, 95.5, 95, 94.9, 99.9, 100]))
    out = feed(rules, seq)
    assert alarms(out) == [
        (1, 100, "raise:r.high:warning"),
        (6, 94.9, "clear:r.high:warning"),
        (8, 100, "raise:r.high:warning"),
    ]
    assert len(telemetry(out)) == len(seq), "the readings themselves pass on"


def test_alarm_on_and_off_delays() -> None:
    rules = engine('kind = "alarm"\nhigh = 100\non_delay_s = 5\noff_delay_s = 3')
    vs = [101, 102, 99, 101, 101, 101, 101, 101, 101, 90, 90, 101, 90, 90, 90, 90]
    out = feed(rules, [(i * 1000, v) for i, v in enumerate(vs)])
    assert alarms(out) == [(8000, 101, "raise:r.high:warning"), (15000, 90, "clear:r.high:warning")]


def test_low_alarm_with_name_and_severity() -> None:
    rules = engine('kind = "alarm"\nname = "tank"\nlow = 10\nhysteresis = 2\nseverity = "critical"')
    out = feed(rules, enumerate([15, 10, 11, 12, 12.5, 9]))
    assert alarms(out) == [
        (1, 10, "raise:tank.low:critical"),
        (4, 12.5, "clear:tank.low:critical"),
        (5, 9, "raise:tank.low:critical"),
    ]
    assert all(r.quality is Quality.GOOD for r in out)


def test_alarm_ignores_bad_readings() -> None:
    rules = engine('kind = "alarm"\nhigh = 1')
    out = rules.process([Reading(P, 0, 5.0), Reading(P, 1, None, Quality.BAD, "timeout")])
    out += rules.process([Reading(P, 2, 0.0)])
    assert alarms(out) == [(0, 5.0, "raise:r.high:warning"), (2, 0.0, "clear:r.high:warning")]


def test_route_sets_subfolder_and_lane_or_drops() -> None:
    routed = engine('kind = "route"\nsubfolder = "fast/lane"\nlane = "event"')
    (r,) = feed(routed, [(0, 1.0)])
    assert (r.subfolder, r.lane) == ("fast/lane", Lane.EVENT)
    dropped = engine('kind = "route"\ndrop = true')
    assert feed(dropped, [(0, 1.0)]) == []


def test_rules_match_by_glob_and_apply_in_order() -> None:
    rules = Rules(
        configs(
            rule_toml('kind = "scale"\nfactor = 2', name="a", points='["pump-*/pressure"]'),
            rule_toml('kind = "scale"\noffset = 1', name="b", points='["pump-1/*"]'),
        )
    )
    out = rules.process(
        [
            Reading("pump-1/pressure", 0, 10),
            Reading("pump-2/pressure", 0, 10),
            Reading("pump-1/flow", 0, 10),
            Reading("boiler/pressure", 0, 10),
        ]
    )
    assert [(r.point, r.value) for r in out] == [
        ("pump-1/pressure", 21.0),
        ("pump-2/pressure", 20.0),
        ("pump-1/flow", 11.0),
        ("boiler/pressure", 10),
    ]


DEADBAND = rule_toml('kind = "deadband"\nabsolute = 1', name="db")
OTHER = rule_toml('kind = "scale"\nfactor = 1', name="other", points='["boiler/flow"]')


def test_reload_keeps_state_of_unchanged_rules() -> None:
    rules = Rules(configs(DEADBAND))
    assert values(feed(rules, [(0, 10.0)])) == [10.0]
    rules.reload(configs(OTHER, DEADBAND))
    assert values(feed(rules, [(1, 10.5)])) == [], "the deadband still remembers 10.0"
    assert values(feed(rules, [(2, 11.0)])) == [11.0]


def test_reload_resets_state_of_changed_rules() -> None:
    rules = Rules(configs(DEADBAND))
    feed(rules, [(0, 10.0)])
    rules.reload(configs(rule_toml('kind = "deadband"\nabsolute = 2', name="db")))
    assert values(feed(rules, [(1, 10.5)])) == [10.5], "a changed rule starts afresh"
    assert values(feed(rules, [(2, 11.5)])) == []


def test_reload_keeps_open_windows_and_raised_alarms() -> None:
    window = rule_toml('kind = "window"\nseconds = 10\nemit = ["count"]', name="w")
    alarm = rule_toml('kind = "alarm"\nhigh = 100\nhysteresis = 10', name="a")
    rules = Rules(configs(alarm, window))
    first = feed(rules, [(1000, 120.0), (2000, 95.0)])
    assert alarms(first) == [(1000, 120.0, "raise:a.high:warning")]
    rules.reload(configs(OTHER, alarm, window))
    out = feed(rules, [(3000, 105.0)])
    assert alarms(out) == [], "still raised: no second raise"
    out = rules.tick(11000)
    assert [(r.point, r.value) for r in out] == [(f"{P}/count", 3)]
    out = feed(rules, [(12000, 80.0)])
    assert alarms(out) == [(12000, 80.0, "clear:a.high:warning")]


def test_reload_without_a_rule_passes_its_points_through() -> None:
    rules = Rules(configs(DEADBAND))
    feed(rules, [(0, 1.0)])
    rules.reload(())
    assert values(feed(rules, [(1, 1.0)])) == [1.0]


def test_example_configuration_rules_run_and_its_commented_rule_loads() -> None:
    text = example_path().read_text()
    rules = Rules(load(text).rules)
    out = rules.process([Reading("boiler/pressure", 0, 1.5), Reading("boiler/pressure", 1, 1.52)])
    assert values(out) == [1.5], "the deadband of 0.05 bar holds back 1.52"
    commented = text.split("# [[rules]]", 1)[1]
    uncommented = "[[rules]]" + "\n".join(
        line.removeprefix("# ") for line in commented.splitlines()
    )
    cfg = load(text + "\n" + uncommented.replace("#\n", "\n"))
    assert [r.name for r in cfg.rules] == ["boiler_pressure", "temperature_minutes"]
