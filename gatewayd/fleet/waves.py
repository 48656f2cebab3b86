"""Waves: what `fleet rollout` (a config document) and `fleet update` (a release) share.

A `Job` says how to send one gateway its change and how to read the outcome from its state
document; `Waves` runs the plan: wave after wave, pushes, waiting, halting, saving, the report.

Invariants:
- a wave starts only when every gateway of the one before has a final result; the run halts as
  soon as the failures (the job's own, no answer within --health-timeout, --require false) are
  more than --max-failures, and no later wave is sent anything;
- inside a wave, sends go out pipelined, at most `job.window` awaiting their PUBACK at once; the
  plan is saved after each window, before the next one is sent: a run killed between a PUBACK
  and the save sends that gateway again only if the broker (config: the retained document;
  update: the state document) does not show it received it (`job.received`);
- a gateway's result, once final, never changes; `after_halt` is the job's (config: put the
  previous document back; update: nothing, the gateways roll themselves back);
- a gateway whose state documents, published well after its push, show nothing of it is sent it
  again (RESEND_AFTER_S, doubling), where the job says a second send is harmless
  (`job.resend`): NATS 2.9 now and then acknowledged a retained push and never delivered it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from gatewayd.backoff import exponential

from .broker import FleetBroker, FleetError
from .plan import FAILURES, GatewayPlan, Plan, save
from .state import NAMES, View, read

# After `applied`, how long --require may take to become true (state documents come at most 1/s).
REQUIRE_GRACE_S = 10.0
# A push with no trace in the gateway's state this long after it is sent again (then 2x, 4x...);
# a gateway trying a candidate shows its version at once.
RESEND_AFTER_S = 15.0


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


class Job(Protocol):
    what: str  # "version 3", "update to 0.2.0": for the report
    window: int  # sends awaiting their PUBACK at once

    def received(self, g: GatewayPlan) -> bool:
        """The broker shows the gateway has it already (sent by an earlier run)."""
        ...

    def send(self, g: GatewayPlan) -> list[Any] | None:
        """Publish what this gateway gets; paho's infos to await, None if it could not."""
        ...

    def verdict(self, g: GatewayPlan, view: View) -> tuple[str, str] | None:
        """A final (result, reason) read from the gateway's state, or None while it works."""
        ...

    def timeout_reason(self, g: GatewayPlan, view: View | None) -> str: ...

    def after_halt(self, run: Waves) -> None: ...

    def resend(self, g: GatewayPlan, view: View) -> bool:
        """The state shows nothing of the push, and sending it again is harmless."""
        ...


class Waves:
    def __init__(
        self,
        broker: FleetBroker,
        plan: Plan,
        job: Job,
        state_path: Path,
        out: TextIO = sys.stdout,
        progress: TextIO | None = None,
    ) -> None:
        self.broker = broker
        self.plan = plan
        self.job = job
        self.state_path = state_path
        self.out = out
        self.progress = progress  # a terminal: the progress bar goes here
        self.require = compile_require(plan.require)
        self._applied_at: dict[str, float] = {}  # gateway -> when its `applied` was first seen
        self._settled = broker.connects  # the session whose retained documents were awaited
        self._resent: dict[str, int] = {}  # gateway -> times its push was sent again

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
            todo = [g for g in wave if g.result is None and not g.pushed]
            for g in self.send_all(todo, self.job):
                g.result, g.reason = "timeout", "the broker acknowledged no push"
            if todo:
                p.wave_send_s[str(i + 1)] = round(time.monotonic() - t0, 3)
            self.save()
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
            self.job.after_halt(self)
        self.out.write(self.report())
        return 0 if p.status == "done" else 1

    def send_all(self, todo: list[GatewayPlan], job: Job) -> list[GatewayPlan]:
        """Send each gateway its part, `job.window` at a time; returns those never acknowledged.

        A broker node lost under us: the cluster may refuse sessions for a while (NATS while
        JetStream re-elects); keep trying, for as long as a gateway has to answer."""
        deadline = time.monotonic() + self.plan.health_timeout_s
        left = list(todo)
        while left and time.monotonic() < deadline:
            if not self.broker.ensure_connected():
                time.sleep(1.0)
                continue
            if self.broker.connects != self._settled:  # a new session: its retained documents
                self.broker.settle(quiet_s=0.3, max_s=2.0)
                self._settled = self.broker.connects
            batch, left = left[: job.window], left[job.window :]
            sent: list[tuple[GatewayPlan, list[Any]]] = []
            retry = []
            for g in batch:
                if job.received(g):
                    sent.append((g, []))  # sent already: by an earlier run, or before a lost ack
                    continue
                infos = job.send(g)
                if infos is None:
                    retry.append(g)
                else:
                    sent.append((g, infos))
            acked = self.broker.wait_published([i for _, infos in sent for i in infos])
            now = time.time()
            for g, infos in sent:
                if all(acked.get(id(i), False) for i in infos):
                    g.pushed, g.pushed_at = True, g.pushed_at or now
                else:
                    retry.append(g)
            self.save()
            self._bar_sent(len(todo) - len(left) - len(retry), len(todo))
            left = retry + left
        return left

    def _await(self, wave: list[GatewayPlan], index: int) -> None:
        p = self.plan
        while True:
            open_ = [g for g in wave if g.result is None]
            if not open_:
                return
            self.broker.ensure_connected()
            now = time.time()
            changed = False
            for g in open_:
                if g.pushed_at is None:  # pushed by a run that died before saving the time
                    g.pushed_at = now
                seen = self.broker.states.get(g.id)
                view = read(g.id, seen) if seen is not None else None
                verdict = self._verdict(g, view) if view is not None else None
                if verdict is not None:
                    g.result, g.reason = verdict
                elif seen is not None and view is not None and self._resend_due(g, view, seen.at):
                    self._resend(g)
                    continue
                elif now - g.pushed_at > p.health_timeout_s:
                    g.result = "timeout"
                    g.reason = self.job.timeout_reason(g, view)
                    if view is not None and g.id in self._applied_at:
                        src = self.plan.require
                        g.reason = f"--require {src!r} stayed false for {p.health_timeout_s:g} s"
                else:
                    continue
                g.answered_s = round(now - g.pushed_at, 2)
                changed = True
            if changed:
                self.save()
            self._bar(index, wave)
            self.broker.wait_change(0.5)

    def _resend_due(self, g: GatewayPlan, view: View, arrived: float) -> bool:
        """`arrived`: when its latest state reached fleet (fleet's clock, not the gateway's)."""
        assert g.pushed_at is not None
        wait = exponential(self._resent.get(g.id, 0), RESEND_AFTER_S, self.plan.health_timeout_s)
        due = g.pushed_at + wait
        # A state document from after `due`: the gateway is alive and still shows nothing of it.
        return arrived >= due and self.job.resend(g, view)

    def _resend(self, g: GatewayPlan) -> None:
        n = self._resent[g.id] = self._resent.get(g.id, 0) + 1
        infos = self.job.send(g) if self.broker.connected else None
        acked = self.broker.wait_published(infos or [], timeout_s=5.0)
        ok = bool(infos) and all(acked.get(id(i), False) for i in infos or [])
        self.out.write(
            f"{g.id}: no trace of the {self.job.what} in its state "
            f"{time.time() - (g.pushed_at or 0):.0f} s after the push; sent again (#{n}"
            f"{'' if ok else ', not acknowledged'})\n"
        )
        self.out.flush()

    def _verdict(self, g: GatewayPlan, view: View) -> tuple[str, str] | None:
        v = self.job.verdict(g, view)
        if v is None or v[0] != "applied" or self.require is None or self.require(view):
            return v
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

    # -- output ------------------------------------------------------------------------------

    def _bar_sent(self, done: int, total: int) -> None:
        if self.progress is not None and total > self.job.window:
            self.progress.write(f"\rsent {done}/{total} ")
            self.progress.flush()

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
            f"{self.job.what}: {p.status.upper()}"
            + (f" ({p.halt_reason})" if p.halt_reason else "")
        )
        lines.append(
            f"{applied} applied, {failed} failed, {untouched} never pushed; "
            f"{times or 'no wave ran'}; total {total:.1f} s"
        )
        return "\n".join(lines) + "\n"
