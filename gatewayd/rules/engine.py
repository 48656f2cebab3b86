"""The engine: readings in, records out, one chain of stages per point.

Invariants:
- Every rule whose points (ids or globs) match a point contributes its steps, in config order,
  to that point's chain; the match is computed once per point id and cached.
- State lives in stage instances keyed by (rule, step, point) inside the rule's runtime; a rule
  keeps its runtime across `reload` when its content is unchanged, so deadbands, windows and
  alarms of unchanged rules carry on.
- A reading of a point no rule names becomes exactly one telemetry record.
- Nothing a reading carries makes the engine raise: expression failures turn the reading bad.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from gatewayd.config.expr import NoValue
from gatewayd.config.rules import (
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
)
from gatewayd.reading import Lane, Quality, Reading, Record

from . import stages as st
from .alarm import alarm
from .flow import NUMERIC, Chain, Flow, Stage
from .stages import ExprFn
from .window import Window

BAD = Quality.BAD


class _Rule:
    """A rule's runtime: its config, bound expressions, and the state of every (step, point)."""

    def __init__(self, cfg: RuleConfig, engine: Rules) -> None:
        self.cfg = cfg
        self.engine = engine
        self.fns = [_bind(s, engine) for s in cfg.steps]
        self.states: dict[tuple[str, int], Stage] = {}

    def matches(self, point: str) -> bool:
        return any(fnmatchcase(point, pattern) for pattern in self.cfg.points)

    def stage(self, key: str, i: int) -> Stage:
        s = self.states.get((key, i))
        if s is None:
            s = self.states[(key, i)] = self._make(self.cfg.steps[i], i, key)
        return s

    def _make(self, step: StepConfig, i: int, key: str) -> Stage:
        errors = self.engine.expr_errors
        if isinstance(step, ScaleStep):
            return st.Scale(step.factor, step.offset)
        if isinstance(step, ConvertStep):
            return st.Scale(*step.affine)
        if isinstance(step, ClampStep):
            return st.Clamp(step.min, step.max)
        if isinstance(step, RoundStep):
            return st.Round(step.digits)
        if isinstance(step, ExprStep):
            return st.Expression(self.fns[i], errors)  # type: ignore[arg-type]
        if isinstance(step, ConditionStep):
            return st.Condition(self.fns[i], errors, step.keep)  # type: ignore[arg-type]
        if isinstance(step, DeadbandStep):
            return st.Deadband(step.absolute, step.percent, step.heartbeat_s)
        if isinstance(step, RateLimitStep):
            return st.RateLimit(step.min_interval_s)
        if isinstance(step, QualityStep):
            return st.QualityFilter(step)
        if isinstance(step, WindowStep):
            return Window(step, key)
        if isinstance(step, AlarmStep):
            return alarm(step)
        if isinstance(step, RouteStep):
            return st.drop if step.drop else st.Route(step)
        raise AssertionError(f"no stage for {step!r}")


def _bind(step: StepConfig, engine: Rules) -> ExprFn | None:
    """Expressions are bound once per rule: every point's stage shares the function."""
    if isinstance(step, ExprStep):
        return step.expr.bind(engine.point_value)
    if isinstance(step, ConditionStep):
        return step.when.bind(engine.point_value)
    return None


class _Entry:
    """A point's cached chain and the one Flow its readings travel in."""

    __slots__ = ("calls", "flow", "tracked")

    def __init__(self, chain: Chain, tracked: bool) -> None:
        self.calls = chain.calls
        self.flow = Flow(chain.point, _no_emit)
        self.tracked = tracked


def _no_emit(r: Record) -> None:
    raise AssertionError("emit before process() set the output")


class Rules:
    """Rules.process(readings) -> records; Rules.tick(now_ms) closes windows by the clock."""

    def __init__(self, rules: Sequence[RuleConfig] = ()) -> None:
        self.expr_errors = [0]  # a cell shared with the expression stages
        self.dropped = 0  # readings filtered out or consumed by a window, since the start
        self._last: dict[str, float] = {}  # last numeric value of points read by point("...")
        self._rules: list[_Rule] = []
        self._entries: dict[str, _Entry | None] = {}
        self._windows: list[Window] = []
        self._tracked: frozenset[str] = frozenset()
        self.reload(rules)

    def point_value(self, point: str) -> float:
        v = self._last.get(point)
        if v is None:
            raise NoValue(point)
        return v

    def reload(self, rules: Sequence[RuleConfig]) -> None:
        """Apply a new rule list; rules equal to a current one keep their state."""
        old: dict[RuleConfig, list[_Rule]] = {}
        for r in self._rules:
            old.setdefault(r.cfg, []).append(r)
        self._rules = [old[cfg].pop(0) if old.get(cfg) else _Rule(cfg, self) for cfg in rules]
        self._tracked = frozenset(
            p
            for cfg in rules
            for step in cfg.steps
            if isinstance(step, ExprStep | ConditionStep)
            for p in (step.expr if isinstance(step, ExprStep) else step.when).points
        )
        self._last = {p: v for p, v in self._last.items() if p in self._tracked}
        known = list(self._entries)
        self._entries.clear()
        self._windows.clear()
        for p in known:  # rebuild now, so tick() still reaches windows of points seen before
            self._entry(p)

    def _entry(self, point: str) -> _Entry | None:
        steps = [(r, i) for r in self._rules if r.matches(point) for i in range(len(r.cfg.steps))]
        tracked = point in self._tracked
        entry = _Entry(self._chain(point, steps), tracked) if steps or tracked else None
        self._entries[point] = entry
        return entry

    def _chain(self, key: str, steps: list[tuple[_Rule, int]]) -> Chain:
        stages: list[Stage] = []
        for j, (rule, i) in enumerate(steps):
            stage = rule.stage(key, i)
            stages.append(stage)
            if isinstance(stage, Window):
                rest = steps[j + 1 :]
                stage.tails = tuple(self._chain(f"{key}/{agg}", rest) for agg in stage.aggs)
                self._windows.append(stage)
                break
        return Chain(key, tuple(stages))

    def process(self, readings: Iterable[Reading]) -> list[Record]:
        if not self._rules:  # no rule names any point (nothing tracked either): one record each
            of = Record.of
            return [of(r) for r in readings]
        out: list[Record] = []
        append = out.append
        of = Record.of
        entries = self._entries
        last = self._last
        dropped = 0
        for r in readings:
            point = r.point
            try:
                entry = entries[point]
            except KeyError:
                entry = self._entry(point)
            if entry is None:
                append(of(r))
                continue
            f = entry.flow
            v = f.value = r.value
            q = f.quality = r.quality
            f.emit = append
            f.ts = r.ts_ms
            f.reason = r.reason
            f.lane = Lane.TELEMETRY
            f.subfolder = None
            numeric = f.numeric = q is not BAD and type(v) in NUMERIC
            if numeric and entry.tracked:
                last[point] = float(v)  # type: ignore[arg-type]
            for call in entry.calls:
                if not call(f):
                    dropped += 1
                    break
            else:
                append(Record(point, f.ts, f.value, f.quality, f.reason, f.lane, f.subfolder))
        self.dropped += dropped
        return out

    def tick(self, now_ms: int) -> list[Record]:
        """Close the windows whose end (plus grace) is past; the daemon calls this every second."""
        out: list[Record] = []
        for w in self._windows:
            w.tick(now_ms, out.append)
        return out

    @property
    def late_readings(self) -> int:
        return sum(w.late for w in self._windows)
