"""`fleet rollout`: push a config document wave by wave; halt, and put back, when it hurts.

Invariants:
- a wave starts only when every gateway of the one before has a final result; the rollout halts
  as soon as the failures (rejected, rolled back, no answer within --health-timeout, --require
  false) are more than --max-failures, and no later wave is pushed;
- a gateway's outcome is read from its own state document: `config.version` equal to the
  rollout's version with a final `config.status` (gatewayd/remote_config/manager.py);
- every change to the plan is saved before the next push, and a push is skipped when the
  broker's retained config already carries the version: a resumed run pushes nothing twice;
- after a halt, gateways that were pushed get their previous document under version + 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .broker import FleetBroker, FleetError
from .plan import FAILURES, GatewayPlan, Plan, encode, for_gateway, save
from .state import NAMES, View, read

# remote_config.manager.Outcome; superseded: a newer push (not this rollout's) overtook it.
FINAL_STATUSES = ("applied", "rejected", "rolled_back", "superseded")
# After `applied`, how long --require may take to become true (state documents come at most 1/s).
REQUIRE_GRACE_S = 10.0


def compile_require(source: str | None) -> Callable[[View], bool] | None:
    """`--require` in the rules' safe expression language, over the state's numbers."""
    if not source:
        return None
    from gatewayd.config.expr import ExprError, NoValue, compile_expr

    try:
        expr = compile_expr(source, variables=NAMES)
    except ExprError as exc:
        raise FleetError(f"--require {source!r}: {exc}; it may name {', '.join(NAMES)}") from exc

    def no_point(pid: str) -> float:
        raise NoValue(pid)

    fn = expr.bind(no_point)

    def check(view: View) -> bool:
        names = view.names()
        try:
            return bool(fn(*[names[n] for n in NAMES]))
        except (ArithmeticError, ValueError, LookupError):
            return False

    return check


class Rollout:
    def __init__(
        self,
        broker: FleetBroker,
        plan: Plan,
        doc: dict[str, Any],
        state_path: Path,
        out: TextIO = sys.stdout,
        progress: TextIO | None = None,
    ) -> None:
        self.broker = broker
        self.plan = plan
        self.doc = doc
        self.state_path = state_path
        self.out = out
        self.progress = progress  # a terminal: the progress bar goes here
        self.require = compile_require(plan.require)
        self._applied_at: dict[str, float] = {}  # gateway -> when its `applied` was first seen
        self._settled = broker.connects  # the session whose retained documents were awaited

    def save(self) -> None:
        save(self.plan, self.state_path)

    # -- the waves -----------------------------------------------------------------------------

    def run(self) -> int:
        p = self.plan
        for i, ids in enumerate(p.waves):
            if p.status != "running":
                break
            wave = [p.gateways[g] for g in ids]
            if all(g.result is not None for g in wave):
                continue
            t0 = time.monotonic()
            for g in wave:
                if g.result is None and not g.pushed:
                    self._push(g)
            self._await(wave, i)
            p.wave_times_s[str(i + 1)] = round(
                p.wave_times_s.get(str(i + 1), 0.0) + time.monotonic() - t0, 2
            )
            failures = p.failures()
            if len(failures) > p.max_failures:
                first = failures[0]
                p.status = "halted"
                p.halt_reason = (
                    f"{len(failures)} failed, more than --max-failures {p.max_failures}: "
                    f"{first.id} {first.result}: {first.reason}"
                )
            self.save()
            self._wave_line(i, wave, time.monotonic() - t0)
        if p.status == "running":
            p.status = "done"
            self.save()
        if p.status == "halted":
            self._revert()
        self.out.write(self.report())
        return 0 if p.status == "done" else 1

    def _push(self, g: GatewayPlan, doc: dict[str, Any] | None = None) -> bool:
        """Push once: skipped when the broker already holds the version (pushed before)."""
        version = self.plan.version if doc is None else doc["version"]
        # A broker node lost under us: the cluster may refuse sessions for a while (NATS while
        # JetStream re-elects); keep trying, for as long as a gateway has to answer.
        deadline = time.monotonic() + self.plan.health_timeout_s
        done = False
        while not done and time.monotonic() < deadline:
            if not self.broker.ensure_connected():
                time.sleep(1.0)
                continue
            if self.broker.connects != self._settled:  # a new session: its retained configs
                self.broker.settle(quiet_s=0.3, max_s=2.0)
                self._settled = self.broker.connects
            seen = self.broker.configs.get(g.id)
            if seen is not None and seen.doc.get("version") == version:
                done = True  # pushed already: by an earlier run, or before a lost PUBACK
            else:
                body = doc if doc is not None else for_gateway(self.doc, g.id, g.labels)
                done = self.broker.push(g.id, encode(body))
        if not done:
            if doc is None:
                g.result, g.reason = "timeout", "the broker acknowledged no push"
                self.save()
            return False
        if doc is None:
            g.pushed, g.pushed_at = True, time.time()
            self.save()
        return True

    def _await(self, wave: list[GatewayPlan], index: int) -> None:
        p = self.plan
        while True:
            open_ = [g for g in wave if g.result is None]
            if not open_:
                return
            self.broker.ensure_connected()
            now = time.time()
            for g in open_:
                if g.pushed_at is None:  # pushed by a run that died before saving the time
                    g.pushed_at = now
                verdict = self._verdict(g, p.version)
                if verdict is not None:
                    g.result, g.reason = verdict
                    g.answered_s = round(now - g.pushed_at, 2)
                    self.save()
                elif now - g.pushed_at > p.health_timeout_s:
                    g.result = "timeout"
                    g.reason = self._timeout_reason(g)
                    g.answered_s = round(now - g.pushed_at, 2)
                    self.save()
            self._bar(index, wave)
            self.broker.wait_change(0.5)

    def _verdict(self, g: GatewayPlan, version: int) -> tuple[str, str] | None:
        seen = self.broker.states.get(g.id)
        if seen is None:
            return None
        view = read(g.id, seen)
        o = view.outcome_of(version) or {}
        if o.get("status") not in FINAL_STATUSES:
            return None
        status, reason = str(o["status"]), str(o.get("reason", ""))
        if status == "applied" and self.require is not None and not self.require(view):
            now = time.time()
            since = self._applied_at.setdefault(g.id, now)
            if (
                now - since <= REQUIRE_GRACE_S
                and now - (g.pushed_at or 0) <= self.plan.health_timeout_s
            ):
                return None  # the state may lag the outcome by a publish or two: wait a little
            src = self.plan.require or ""
            names = view.names()
            shown = ", ".join(f"{n}={names[n]:g}" for n in NAMES if n in src)
            return "require_failed", f"--require {src!r} is false after applied ({shown})"
        return status, reason

    def _timeout_reason(self, g: GatewayPlan) -> str:
        seen = self.broker.states.get(g.id)
        if seen is None:
            return f"no state document within {self.plan.health_timeout_s:g} s"
        view = read(g.id, seen)
        if (view.outcome_of(self.plan.version) or {}).get("status") == "applied":
            return f"--require stayed false for {self.plan.health_timeout_s:g} s"
        o = view.outcome or {}
        return (
            f"no outcome for version {self.plan.version} within {self.plan.health_timeout_s:g} s "
            f"(last: v{o.get('version')} {o.get('status')})"
        )

    # -- after a halt -----------------------------------------------------------------------

    def _revert(self) -> None:
        """Pushed gateways get their previous document back, as version + 1."""
        back = self.plan.version + 1
        todo = [g for g in self.plan.gateways.values() if g.pushed and g.reverted is None]
        waiting = []
        for g in todo:
            if g.previous_doc is None:
                g.reverted = (
                    "not needed: it rolled back itself"
                    if g.result == "rolled_back"
                    else "no previous pushed document (it ran its local file): put it back by hand"
                )
                continue
            doc = dict(g.previous_doc, version=back)
            if self._push(g, doc):
                g.reverted = f"pushed v{back}"
                waiting.append(g)
            else:
                g.reverted = f"push of v{back} not acknowledged; run again"
            self.save()
        deadline = time.time() + self.plan.health_timeout_s
        while waiting and time.time() < deadline:
            for g in list(waiting):
                seen = self.broker.states.get(g.id)
                o = (read(g.id, seen).outcome_of(back) if seen is not None else None) or {}
                if o.get("status") in FINAL_STATUSES:
                    g.reverted = f"pushed v{back}: {o.get('status')}"
                    waiting.remove(g)
                    self.save()
            self.broker.wait_change(0.5)
            self.broker.ensure_connected()
        for g in waiting:
            g.reverted = f"pushed v{back}: no answer within {self.plan.health_timeout_s:g} s"
        self.save()

    # -- output ------------------------------------------------------------------------------

    def _bar(self, index: int, wave: list[GatewayPlan]) -> None:
        if self.progress is None:
            return
        done = sum(1 for g in wave if g.result is not None)
        failed = len(self.plan.failures())
        width = 30
        fill = width * done // max(1, len(wave))
        self.progress.write(
            f"\rwave {index + 1}/{len(self.plan.waves)} [{'#' * fill}{'.' * (width - fill)}] "
            f"{done}/{len(wave)} answered, {failed} failed "
        )
        self.progress.flush()

    def _wave_line(self, index: int, wave: list[GatewayPlan], seconds: float) -> None:
        if self.progress is not None:
            self.progress.write("\n")
        counts: dict[str, int] = {}
        for g in wave:
            counts[str(g.result)] = counts.get(str(g.result), 0) + 1
        self.out.write(
            f"wave {index + 1}/{len(self.plan.waves)}: {len(wave)} gateways, "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f" in {seconds:.1f} s\n"
        )
        self.out.flush()

    def report(self) -> str:
        p = self.plan
        rows = [("GATEWAY", "WAVE", "RESULT", "ANSWER", "REASON", "PUT BACK")]
        for g in sorted(p.gateways.values(), key=lambda g: (g.wave, g.id)):
            rows.append(
                (
                    g.id,
                    str(g.wave),
                    g.result or ("not pushed" if not g.pushed else "waiting"),
                    "-" if g.answered_s is None else f"{g.answered_s:.1f}s",
                    (g.reason[:70] + "…") if len(g.reason) > 71 else g.reason or "-",
                    g.reverted or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        applied = sum(1 for g in p.gateways.values() if g.result == "applied")
        failed = sum(1 for g in p.gateways.values() if g.result in FAILURES)
        untouched = sum(1 for g in p.gateways.values() if not g.pushed and g.result is None)
        total = sum(p.wave_times_s.values())
        times = ", ".join(f"wave {k} {v:.1f} s" for k, v in sorted(p.wave_times_s.items()))
        lines.append("")
        lines.append(
            f"rollout of version {p.version}: {p.status.upper()}"
            + (f" ({p.halt_reason})" if p.halt_reason else "")
        )
        lines.append(
            f"{applied} applied, {failed} failed, {untouched} never pushed; "
            f"{times or 'no wave ran'}; total {total:.1f} s"
        )
        return "\n".join(lines) + "\n"
