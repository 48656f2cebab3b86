"""The expression language: what it computes, and what it refuses at load with the column."""

from __future__ import annotations

import math

import pytest
from rules_support import BASE, engine, feed, rule_toml

from gatewayd.config import ConfigError, load
from gatewayd.config.expr import MAX_DEPTH, MAX_NODES, MAX_SOURCE, compile_expr
from gatewayd.reading import Quality


def run(expr: str, value: float, prev: float = 0.0, dt: float = 0.0, ts: float = 0.0) -> object:
    return compile_expr(expr).bind(lambda p: {"boiler/flow": 7.0}[p])(value, prev, dt, ts)


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        ("value * 0.1 + 2", 10, 3.0),
        ("(value - 32) * 5 / 9", 212, 100.0),
        ("value // 4 + value % 4", 10, 4.0),
        ("-value ** 2", 3, -9.0),
        ("value ** 0.5", 16, 4.0),
        ("abs(value) + max(1, 2, value) + min(value, 0)", -3, 3 + 2 - 3),
        ("round(value, 2)", 1.23456, 1.23),
        ("sqrt(value) + floor(2.7) + ceil(2.1)", 9, 8.0),
        ("clamp(value, 0, 10)", 42, 10.0),
        ("log(exp(value)) + log10(100) + log(8, 2)", 1, 6.0),
        ("value if value > 0 else 0", -5, 0.0),
        ("1 if 0 < value < 10 and not value == 5 or value == 100 else 0", 3, 1.0),
        ("value > 10", 11, True),
        ("pi * e", 1, math.pi * math.e),
        ("point('boiler/flow') - value", 2, 5.0),
        ("True + value", 1, 2.0),
    ],
)
def test_expression_computes(expr: str, value: float, expected: object) -> None:
    assert run(expr, value) == pytest.approx(expected)


def test_prev_dt_and_ts_are_bound() -> None:
    assert run("(value - prev) / dt + ts", 10, prev=4, dt=2, ts=100) == 103.0


def test_numbers_are_floats_so_integer_powers_cannot_grow_without_bound() -> None:
    assert type(run("2 ** 64", 0)) is float
    with pytest.raises(OverflowError):
        run("(value ** 64) ** 64", 1e10)


def load_expr(expr: str, key: str = "expr", kind: str = "expr") -> None:
    text = rule_toml(f"kind = \"{kind}\"\n{key} = '''{expr}'''")
    load(BASE + text)


HOSTILE = [
    ("__import__('os')", "column 1: unknown function '__import__'"),
    ("__import__('os').system('rm -rf /')", "column 18: attribute access is not allowed"),
    ("().__class__", "column 4: attribute access is not allowed"),
    ("value.__class__.__mro__", "column 17: attribute access is not allowed"),
    ("9**9**9", "column 4: an exponent must be a number constant"),
    ("value ** 1000", "column 10: exponent 1000 is larger than 64"),
    ("'a' * 10**9", 'column 1: text is only allowed as the point id in point("dev/p")'),
    ("len('a' * 10**9)", "column 1: unknown function 'len'"),
    ("[0] * 10**9", "column 1: lists are not allowed"),
    ("(1,) * 10**9", "column 1: tuples are not allowed"),
    ("{}", "column 1: dicts are not allowed"),
    ("[x for x in range(10**9)]", "column 1: comprehensions are not allowed"),
    ("sum(x for x in value)", "column 1: unknown function 'sum'"),
    ("max(x for x in value)", "column 4: comprehensions are not allowed"),
    ("(lambda: 1)()", "column 2: lambdas are not allowed"),
    ("lambda: 0", "column 1: lambdas are not allowed"),
    ("f'{value}'", "column 1: f-strings are not allowed"),
    ("value[0]", "column 1: subscripts are not allowed"),
    ("(x := 1)", "column 2: assignment (:=) is not allowed"),
    ("__builtins__", "column 1: unknown name '__builtins__'"),
    ("globals()", "column 1: unknown function 'globals'"),
    ("max(*value)", "column 5: unpacking (*) is not allowed"),
    ("round(value, ndigits=2)", "column 14: round() takes no keyword arguments"),
    ("round(value, 10**9)", "column 14: round()'s digits must be an integer constant"),
    ("value << 100000", "column 1: operator << is not allowed"),
    ("value in value", "column 1: comparison in is not allowed"),
    ("value is None", "column 1: comparison is is not allowed"),
    ("None", "column 1: None is not a number"),
    ("1j", "column 1: 1j is not a number"),
    ("point(value)", "column 1: point() takes one point id in quotes"),
    ("point('x' * 2)", "column 1: point() takes one point id in quotes"),
    ("point('../../etc')", "column 7: '../../etc' is not a point id"),
    ("import os", "column 1: not a valid expression: invalid syntax"),
    ("value; 1", "column 6: not a valid expression: invalid syntax"),
    ("1) + (__import__", "column 1: unbalanced parentheses"),
    ("value) * (2", "column 1: unbalanced parentheses"),
    ("-" * (MAX_DEPTH + 1) + "value", f"nested more than {MAX_DEPTH} levels deep"),
    ("abs(" * 20 + "value" + ")" * 20, f"nested more than {MAX_DEPTH} levels deep"),
    ("(" * 300 + "1" + ")" * 300, f"longer than {MAX_SOURCE} characters"),
    ("(" * 240 + "1" + ")" * 240, "column"),  # the parser's own limit, still refused
    ("+".join(["value"] * 80), f"nested more than {MAX_DEPTH} levels deep"),
    (
        " or ".join(["value"] * (MAX_NODES + 1)).replace("value", "1", 1),
        f"longer than {MAX_SOURCE} characters",
    ),
    ("max(" + ",".join(["value"] * 9) + ")", "max() takes 2 to 8 arguments, got 9"),
    ("<".join(["1"] * MAX_NODES), f"more than {MAX_NODES} parts"),
    ("(1 if value else 2).real", "column 21: attribute access is not allowed"),
]


@pytest.mark.parametrize(("expr", "message"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_expression_is_refused_at_load(expr: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_expr(expr)
    text = str(err.value)
    assert text.startswith("rules[0].steps[0].expr: "), text
    assert message in text
    assert "; " in text, "an error says how to fix it"


def test_condition_expressions_are_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"^rules\[0\]\.steps\[0\]\.when: column 4: attribute"):
        load_expr("().__class__", key="when", kind="keep")


def test_multiline_expression_names_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"expr: line 2, column 9: attribute access"):
        load_expr("value +\n  value.real")
    load_expr("\n  value * 2  # doubled\n")


def test_runtime_overflow_and_domain_errors_mark_the_reading_bad() -> None:
    rules = engine(
        'kind = "expr"\nexpr = "exp(value)"',
    )
    out = feed(rules, [(0, 1000.0)])
    assert [(r.value, r.quality, r.reason) for r in out] == [
        (None, Quality.BAD, "expr_error:OverflowError")
    ]
    sqrt = engine('kind = "expr"\nexpr = "sqrt(value)"')
    assert [r.reason for r in feed(sqrt, [(0, -1.0)])] == ["expr_error:ValueError"]


def test_complex_results_mark_the_reading_bad() -> None:
    rules = engine('kind = "expr"\nexpr = "value ** 0.5"')
    out = feed(rules, [(0, -4.0), (1, 4.0)])
    assert [(r.value, r.quality, r.reason) for r in out] == [
        (None, Quality.BAD, "expr_error:complex"),
        (2.0, Quality.GOOD, None),
    ]
