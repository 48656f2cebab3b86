"""`fleet rollout`: a config document, wave by wave (gatewayd/fleet/waves.py); put back on a halt.

Invariants:
- a gateway's outcome is read from its own state document: `config.version` equal to the
  rollout's version with a final `config.status` (gatewayd/remote_config/manager.py);
- a push is skipped when the broker's retained config already carries the version: a resumed
  run pushes nothing twice;
- after a halt, gateways that were pushed get their previous document under version + 1.
"""

from __future__ import annotations

import time
from typing import Any

from .broker import FleetBroker
from .plan import GatewayPlan, Plan, encode, for_gateway
from .state import View, read
from .waves import Waves

# remote_config.manager.Outcome; superseded: a newer push (not this rollout's) overtook it.
FINAL_STATUSES = ("applied", "rejected", "rolled_back", "superseded")
# Retained pushes awaiting their PUBACK at once (a few hundred bytes each).
WINDOW = 64


class ConfigJob:
    """Push `doc` (rendered per gateway) retained on each gateway's config topic."""

    def __init__(self, broker: FleetBroker, plan: Plan, doc: dict[str, Any]) -> None:
        self.broker = broker
        self.plan = plan
        self.doc = doc
        self.version = int(plan.version)
        self.what = f"rollout of version {self.version}"
        self.window = WINDOW

    def body(self, g: GatewayPlan) -> dict[str, Any]:
        return for_gateway(self.doc, g.id, g.labels)

    def received(self, g: GatewayPlan) -> bool:
        seen = self.broker.configs.get(g.id)
        return seen is not None and seen.doc.get("version") == self.version

    def send(self, g: GatewayPlan) -> list[Any] | None:
        info = self.broker.publish(
            self.broker.s.config_topic.format(gateway=g.id), encode(self.body(g)), retain=True
        )
        return None if info is None else [info]

    def verdict(self, g: GatewayPlan, view: View) -> tuple[str, str] | None:
        o = view.outcome_of(self.version) or {}
        if o.get("status") not in FINAL_STATUSES:
            return None
        return str(o["status"]), str(o.get("reason", ""))

    def resend(self, g: GatewayPlan, view: View) -> bool:
        """A retained document again is harmless: the gateway takes the same bytes once."""
        return view.config_version != self.version and view.outcome_of(self.version) is None

    def timeout_reason(self, g: GatewayPlan, view: View | None) -> str:
        t = self.plan.health_timeout_s
        if view is None:
            return f"no state document within {t:g} s"
        o = view.outcome or {}
        return (
            f"no outcome for version {self.version} within {t:g} s "
            f"(last: v{o.get('version')} {o.get('status')})" + view.refused_note()
        )

    def after_halt(self, run: Waves) -> None:
        """Pushed gateways get their previous document back, as version + 1."""
        back = self.version + 1
        todo = [g for g in self.plan.gateways.values() if g.pushed and g.reverted is None]
        for g in todo:
            if g.previous_doc is None:
                g.reverted = (
                    "not needed: it rolled back itself"
                    if g.result == "rolled_back"
                    else "no previous pushed document (it ran its local file): put it back by hand"
                )
        todo = [g for g in todo if g.reverted is None]
        put_back = _PutBack(self.broker, back)
        missed = run.send_all(todo, put_back)
        for g in todo:
            g.reverted = (
                f"push of v{back} not acknowledged; run again" if g in missed else f"pushed v{back}"
            )
        run.save()
        waiting = [g for g in todo if g not in missed]
        deadline = time.time() + self.plan.health_timeout_s
        while waiting and time.time() < deadline:
            for g in list(waiting):
                seen = self.broker.states.get(g.id)
                o = (read(g.id, seen).outcome_of(back) if seen is not None else None) or {}
                if o.get("status") in FINAL_STATUSES:
                    g.reverted = f"pushed v{back}: {o.get('status')}"
                    waiting.remove(g)
                    run.save()
            self.broker.wait_change(0.5)
            self.broker.ensure_connected()
        for g in waiting:
            g.reverted = f"pushed v{back}: no answer within {self.plan.health_timeout_s:g} s"
        run.save()


class _PutBack:
    """A gateway's previous document, as version `back` (only `received` and `send` are used)."""

    what = "put back"
    window = WINDOW

    def __init__(self, broker: FleetBroker, back: int) -> None:
        self.broker = broker
        self.back = back

    def received(self, g: GatewayPlan) -> bool:
        seen = self.broker.configs.get(g.id)
        return seen is not None and seen.doc.get("version") == self.back

    def send(self, g: GatewayPlan) -> list[Any] | None:
        assert g.previous_doc is not None
        info = self.broker.publish(
            self.broker.s.config_topic.format(gateway=g.id),
            encode(dict(g.previous_doc, version=self.back)),
            retain=True,
        )
        return None if info is None else [info]

    def verdict(self, g: GatewayPlan, view: View) -> tuple[str, str] | None:
        return None

    def timeout_reason(self, g: GatewayPlan, view: View | None) -> str:
        return ""

    def resend(self, g: GatewayPlan, view: View) -> bool:
        return False  # not awaited through Waves

    def after_halt(self, run: Waves) -> None:
        pass
