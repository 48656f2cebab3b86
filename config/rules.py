"""Reading `[[rules]]`: rules attach to points by id or glob and list steps run in order.

Invariants:
- the rule and step types are frozen dataclasses of config/model.py (re-exported here for the
  rules engine); this module only reads tables into them;
- a rule is identified by its whole content (name, points and steps): a reload keeps the state
  of every rule whose content did not change;
- expressions are validated and compiled here, once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .errors import ConfigError, closest
from .expr import Expr, ExprError, compile_expr
from .model import (
    AGGREGATES,
    LANES,
    SEVERITIES,
    AlarmStep,
    ClampStep,
    ConditionStep,
    ConvertStep,
    DeadbandStep,
    ExprStep,
    QualityStep,
    RateLimitStep,
    RoundStep,
    RouteStep,
    RuleConfig,
    ScaleStep,
    StepConfig,
    WindowStep,
    choices_of,
    default_of,
)
from .section import Section
from .units import UNITS

_GLOB = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+/[A-Za-z0-9_.*?\[\]!-]+")
_SUBFOLDER = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def parse_rules(sections: list[Section], known_points: Iterable[str]) -> tuple[RuleConfig, ...]:
    """`[[rules]]` tables; `known_points` ("device/point") are what point("...") may name."""
    known = sorted(set(known_points))
    rules = tuple(_rule(s, known) for s in sections)
    seen: set[str] = set()
    for i, r in enumerate(rules):
        if r.name in seen:
            raise ConfigError(
                f"rules[{i}].name", f"{r.name!r} is used twice", "give each a unique name"
            )
        seen.add(r.name)
    return rules


def _rule(s: Section, known: list[str]) -> RuleConfig:
    name = s.ident("name")
    points = s.strings("points")
    if not points:
        raise ConfigError(
            s.at("points"), "is empty", 'list point ids or globs, e.g. "pump-*/pressure"'
        )
    for i, p in enumerate(points):
        if not _GLOB.fullmatch(p):
            raise ConfigError(
                f"{s.at('points')}[{i}]",
                f"{p!r} is not a point id or glob",
                'write "device/point"; * and ? match any characters, e.g. "pump-*/pressure"',
            )
    sections = s.tables("steps")
    if not sections:
        raise ConfigError(s.at("steps"), "missing", "add at least one [[rules.steps]] table")
    steps = tuple(_step(st, name, known) for st in sections)
    s.done()
    return RuleConfig(name, points, steps)


def _step(s: Section, rule: str, known: list[str]) -> StepConfig:
    kind = s.choice("kind", tuple(_KINDS))
    step = _KINDS[kind](s, rule, known)
    s.done()
    return step


def _scale(s: Section, rule: str, known: list[str]) -> StepConfig:
    d = ScaleStep()
    return ScaleStep(s.number("factor", d.factor), s.number("offset", d.offset))


def _convert(s: Section, rule: str, known: list[str]) -> StepConfig:
    units = tuple(UNITS)
    source, target = s.choice("from", units), s.choice("to", units)
    if UNITS[source][0] != UNITS[target][0]:
        same = [u for u in units if UNITS[u][0] == UNITS[source][0]]
        raise ConfigError(
            s.at("to"),
            f"{source!r} is a {UNITS[source][0]} but {target!r} a {UNITS[target][0]}",
            f"convert {source!r} to one of {', '.join(map(repr, same))}",
        )
    return ConvertStep(source, target)


def _clamp(s: Section, rule: str, known: list[str]) -> StepConfig:
    lo, hi = s.opt_number("min"), s.opt_number("max")
    if lo is None and hi is None:
        raise ConfigError(s.at("min"), "missing, as is max", "set min, max or both")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(s.at("max"), f"{hi} is below min = {lo}", "swap them")
    return ClampStep(lo, hi)


def _round(s: Section, rule: str, known: list[str]) -> StepConfig:
    return RoundStep(s.integer("digits", RoundStep().digits, lo=-6, hi=12))


def _expr_at(s: Section, key: str, known: list[str]) -> Expr:
    text = s.text(key)
    try:
        expr = compile_expr(text)
    except ExprError as exc:
        raise ConfigError(s.at(key), str(exc), exc.fix) from None
    for p in expr.points:
        if p not in known:
            near = closest(p, known)
            raise ConfigError(
                s.at(key),
                f"point({p!r}) names no configured point",
                f"did you mean {near!r}?" if near else "use a device/point id of this file",
            )
    return expr


def _expr(s: Section, rule: str, known: list[str]) -> StepConfig:
    return ExprStep(_expr_at(s, "expr", known))


def _deadband(s: Section, rule: str, known: list[str]) -> StepConfig:
    absolute = s.opt_number("absolute")
    percent = s.opt_number("percent")
    if (absolute is None) == (percent is None):
        raise ConfigError(
            s.at("absolute"),
            "set exactly one of absolute and percent",
            "absolute = 0 passes every change (report by exception)",
        )
    for key, v in (("absolute", absolute), ("percent", percent)):
        if v is not None and v < 0:
            raise ConfigError(s.at(key), f"{v} is below 0", "use a band of 0 or more")
    heartbeat = s.opt_number("heartbeat_s")
    if heartbeat is not None and heartbeat <= 0:
        raise ConfigError(s.at("heartbeat_s"), f"{heartbeat} is not above 0", "use seconds > 0")
    return DeadbandStep(absolute, percent, heartbeat)


def _rate_limit(s: Section, rule: str, known: list[str]) -> StepConfig:
    return RateLimitStep(s.number("min_interval_s", lo=0.001))


def _keep(s: Section, rule: str, known: list[str]) -> StepConfig:
    return ConditionStep(True, _expr_at(s, "when", known))


def _drop(s: Section, rule: str, known: list[str]) -> StepConfig:
    return ConditionStep(False, _expr_at(s, "when", known))


def _quality(s: Section, rule: str, known: list[str]) -> StepConfig:
    d = QualityStep()
    return QualityStep(
        s.choice("bad", choices_of(QualityStep, "bad"), d.bad),
        s.choice("uncertain", choices_of(QualityStep, "uncertain"), d.uncertain),
    )


def _window(s: Section, rule: str, known: list[str]) -> StepConfig:
    seconds = s.integer("seconds", lo=1, hi=24 * 3600)
    emit = s.strings("emit", default_of(WindowStep, "emit"))
    if not emit:
        raise ConfigError(s.at("emit"), "is empty", f"list some of {', '.join(AGGREGATES)}")
    for i, agg in enumerate(emit):
        if agg not in AGGREGATES:
            raise ConfigError(
                f"{s.at('emit')}[{i}]",
                f"{agg!r} is not an aggregate",
                f"use some of {', '.join(map(repr, AGGREGATES))}",
            )
    grace = s.number("grace_s", min(1.0, seconds / 2), lo=0.0)
    if grace >= seconds:
        raise ConfigError(s.at("grace_s"), f"{grace} is not below seconds = {seconds}", "lower it")
    aggs = tuple(dict.fromkeys(emit))
    return WindowStep(seconds, aggs, grace)  # type: ignore[arg-type]


def _alarm(s: Section, rule: str, known: list[str]) -> StepConfig:
    high, low = s.opt_number("high"), s.opt_number("low")
    if high is None and low is None:
        raise ConfigError(s.at("high"), "missing, as is low", "set high, low or both")
    if high is not None and low is not None and low >= high:
        raise ConfigError(s.at("low"), f"{low} is not below high = {high}", "swap them")
    return AlarmStep(
        name=s.ident("name", rule),
        high=high,
        low=low,
        hysteresis=s.number("hysteresis", default_of(AlarmStep, "hysteresis"), lo=0.0),
        on_delay_s=s.number("on_delay_s", default_of(AlarmStep, "on_delay_s"), lo=0.0),
        off_delay_s=s.number("off_delay_s", default_of(AlarmStep, "off_delay_s"), lo=0.0),
        severity=s.choice("severity", SEVERITIES, default_of(AlarmStep, "severity")),
    )


def _route(s: Section, rule: str, known: list[str]) -> StepConfig:
    subfolder = s.opt_text("subfolder")
    lane = s.opt_text("lane")
    if lane is not None and lane not in LANES:
        raise ConfigError(
            s.at("lane"), f"{lane!r} is not allowed", f"use one of {', '.join(map(repr, LANES))}"
        )
    drop = s.flag("drop", RouteStep().drop)
    if subfolder is not None and not _SUBFOLDER.fullmatch(subfolder):
        raise ConfigError(
            s.at("subfolder"),
            f"{subfolder!r} is not a topic subfolder",
            "use letters, digits, '_', '.', '-' and '/' between levels (no + or #)",
        )
    if drop and (subfolder is not None or lane is not None):
        raise ConfigError(
            s.at("drop"),
            "drops the reading, so subfolder and lane do nothing",
            "remove them or drop",
        )
    if not drop and subfolder is None and lane is None:
        raise ConfigError(
            s.at("subfolder"), "missing, as are lane and drop", "set subfolder, lane or drop = true"
        )
    return RouteStep(subfolder, lane, drop)


_KINDS: dict[str, Callable[[Section, str, list[str]], StepConfig]] = {
    "scale": _scale,
    "convert": _convert,
    "clamp": _clamp,
    "round": _round,
    "expr": _expr,
    "deadband": _deadband,
    "rate_limit": _rate_limit,
    "keep": _keep,
    "drop": _drop,
    "quality": _quality,
    "window": _window,
    "alarm": _alarm,
    "route": _route,
}

__all__ = [
    "AGGREGATES",
    "UNITS",
    "AlarmStep",
    "ClampStep",
    "ConditionStep",
    "ConvertStep",
    "DeadbandStep",
    "ExprStep",
    "QualityStep",
    "RateLimitStep",
    "RoundStep",
    "RouteStep",
    "RuleConfig",
    "ScaleStep",
    "StepConfig",
    "WindowStep",
    "parse_rules",
]
