"""`fleet update VERSION`: a signed release, wave by wave (gatewayd/fleet/waves.py).

Each gateway gets the `update` command (gatewayd/lifecycle/update.py) on its commands topic,
with the run's own id, and, for `"source": "mqtt"`, the release's files in chunks after it.

Invariants:
- a gateway's outcome is read from its state document: `software.update` carrying this run's
  id with a final status, and for `applied` also `software.version` equal to VERSION;
- a command is sent again only if the state shows neither this run's id, nor an update to
  VERSION under way, nor VERSION running (commands are not retained: the state is the record);
- nothing is put back after a halt: a gateway whose update fails rolls itself back (its
  deadline, its start check); gateways that applied VERSION in earlier waves keep it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .broker import FleetBroker, FleetError
from .plan import GatewayPlan, Plan
from .state import View
from .waves import Waves

# gatewayd/lifecycle/update.py's outcomes; `refused` and `failed` come before any switch.
FINAL_STATUSES = ("applied", "rolled_back", "refused", "failed")
CHUNK = 48 * 1024
WINDOW_URL = 64  # gateways whose command awaits its PUBACK at once (a few KB each)
WINDOW_MQTT = 2  # with chunks, a whole release per gateway is in flight


def command_digest(command: dict[str, Any]) -> str:
    """What ties a state file to its release: everything but the id."""
    body = {k: v for k, v in command.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def check_command(command: Any, version: str, wheels: list[Path]) -> dict[str, Path]:
    """The command is an `update` to VERSION; with source mqtt, every file of its manifest is
    among `wheels` with the listed size and SHA-256. Returns the files in manifest order."""
    if not isinstance(command, dict) or command.get("command") != "update":
        raise FleetError(
            "the update command is not one: print it with python -m gatewayd.lifecycle.release"
        )
    if command.get("version") != version:
        raise FleetError(f"the command installs {command.get('version')!r}, not {version!r}")
    try:
        manifest = json.loads(command["manifest"])
        files = [(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in manifest["files"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise FleetError(f"the command's manifest is not readable ({exc})") from exc
    if command.get("source") != "mqtt":
        return {}
    by_name = {w.name: w for w in wheels}
    out = {}
    for name, size, sha in files:
        path = by_name.get(name)
        if path is None:
            raise FleetError(f"source mqtt: {name} of the manifest is not among the files given")
        data = path.read_bytes()
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise FleetError(f"{path}: not the file the manifest lists (size or SHA-256)")
        out[name] = path
    return out


class UpdateJob:
    def __init__(
        self, broker: FleetBroker, plan: Plan, command: dict[str, Any], files: dict[str, Path]
    ) -> None:
        self.broker = broker
        self.plan = plan
        self.version = str(plan.version)
        self.command = {**command, "id": plan.run_id}
        self.files = files  # source mqtt: name -> path, in manifest order
        self.what = f"update to {self.version}"
        self.window = WINDOW_MQTT if files else WINDOW_URL

    def received(self, g: GatewayPlan) -> bool:
        seen = self.broker.states.get(g.id)
        if seen is None:
            return False
        sw = seen.doc.get("software")
        if not isinstance(sw, dict):
            return False
        update, step = sw.get("update"), sw.get("update_step")
        return (
            sw.get("version") == self.version
            or (isinstance(update, dict) and update.get("id") == self.plan.run_id)
            or (isinstance(step, dict) and step.get("version") == self.version)
        )

    def send(self, g: GatewayPlan) -> list[Any] | None:
        topic = self.broker.s.commands_topic.format(gateway=g.id)
        first = self.broker.publish(topic, json.dumps(self.command).encode())
        if first is None:
            return None
        infos = [first]
        for index, path in enumerate(self.files.values()):
            data = path.read_bytes()
            for off in range(0, len(data), CHUNK):
                info = self.broker.publish(
                    f"{topic}/update/{self.version}/{index}/{off}", data[off : off + CHUNK]
                )
                if info is None:
                    return None
                infos.append(info)
        return infos

    def verdict(self, g: GatewayPlan, view: View) -> tuple[str, str] | None:
        u = view.update or {}
        if u.get("id") != self.plan.run_id or u.get("status") not in FINAL_STATUSES:
            return None
        status, reason = str(u["status"]), str(u.get("reason", ""))
        if status == "applied" and view.software_version != self.version:
            return None  # the outcome of the new release, before its version shows: wait
        if status == "refused" and (view.update_step or {}).get("version") == self.version:
            return None  # a second copy of the command while the first one installs
        return status, reason

    def resend(self, g: GatewayPlan, view: View) -> bool:
        return False  # a command is not a retained document: a second one could start twice

    def timeout_reason(self, g: GatewayPlan, view: View | None) -> str:
        t = self.plan.health_timeout_s
        if view is None:
            return f"no state document within {t:g} s"
        step = view.update_step or {}
        return (
            f"no outcome for the update to {self.version} within {t:g} s (running "
            f"{view.software_version}, step {step.get('step', '-')})" + view.refused_note()
        )

    def after_halt(self, run: Waves) -> None:
        for g in self.plan.gateways.values():
            if g.result in ("rolled_back", "failed", "refused") and g.reverted is None:
                g.reverted = f"itself: still on {g.previous_version}"
        run.save()
