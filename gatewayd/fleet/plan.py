"""A rollout's or an update's plan and results: waves, per-gateway parts, the state file that
resumes it.

Invariants:
- the state file is written whole, atomically (write-temp, fsync, rename, fsync directory): a
  process killed at any point leaves the previous or the new file, never a torn one;
- the plan is fixed when the run starts (gateways, waves, each one's previous document or
  version) and a resumed run uses it as written; the digest ties the file to its DOC (a config
  document, or the update command) and `kind` to its command;
- a gateway's result, once final (one of FINAL), never changes;
  `pushed` records that its push was acknowledged by the broker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .broker import FleetError

# Config outcomes (remote_config), update outcomes (lifecycle/update.py), and fleet's own.
FAILURES = (
    "rejected", "rolled_back", "superseded", "refused", "failed", "timeout", "require_failed",
)  # fmt: skip
FINAL = ("applied", *FAILURES)


def parse_waves(text: str, total: int) -> list[int]:
    """Sizes of the waves: `N` gateways or `P%` of the selection (rounded up), each wave taking
    at most what is left; `100%` takes the rest."""
    sizes = []
    left = total
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"(\d+)(%?)", item)
        if m is None or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
            raise FleetError(
                f"--waves {text!r}: {item!r} is not a count or a percentage; "
                "write e.g. 1,5%,25%,100%"
            )
        n = math.ceil(total * int(m.group(1)) / 100) if m.group(2) else int(m.group(1))
        n = min(n, left)
        if n:
            sizes.append(n)
            left -= n
    if not sizes and total:
        raise FleetError(f"--waves {text!r}: no wave; write e.g. 1,5%,25%,100%")
    return sizes


_PLACEHOLDER = re.compile(r"\{(gateway|label\.[a-z][a-z0-9_]{0,31})\}")


def render(doc: Any, gateway: str, labels: dict[str, str]) -> Any:
    """The document for one gateway: `{gateway}` and `{label.NAME}` in strings replaced; a string
    that is one placeholder of digits becomes a number (a port, a unit)."""
    if isinstance(doc, dict):
        return {k: render(v, gateway, labels) for k, v in doc.items()}
    if isinstance(doc, list):
        return [render(v, gateway, labels) for v in doc]
    if isinstance(doc, str) and "{" in doc:

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "gateway":
                return gateway
            key = name.partition(".")[2]
            if key not in labels:
                raise FleetError(
                    f"gateway {gateway} has no label {key!r}, used by {{{name}}} in the document; "
                    "give it the label or select only gateways that have it"
                )
            return labels[key]

        out = _PLACEHOLDER.sub(sub, doc)
        if _PLACEHOLDER.fullmatch(doc) and out.isdigit():
            return int(out)
        return out
    return doc


def for_gateway(doc: dict[str, Any], gateway: str, labels: dict[str, str]) -> dict[str, Any]:
    """Rendered, and carrying the gateway's labels unless the document sets its own."""
    out: dict[str, Any] = render(doc, gateway, labels)
    gw = out.setdefault("gateway", {})
    if isinstance(gw, dict) and "labels" not in gw and labels:
        gw["labels"] = dict(labels)
    return out


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(encode(doc)).hexdigest()[:16]


@dataclass
class GatewayPlan:
    id: str
    wave: int
    labels: dict[str, str]
    previous_version: int | str | None  # config version, or the software version (update)
    previous_doc: dict[str, Any] | None  # the retained config before the rollout, if any
    pushed: bool = False
    pushed_at: float | None = None
    result: str | None = None  # one of FINAL
    reason: str = ""
    answered_s: float | None = None  # push to outcome
    reverted: str | None = None  # after a halt: "pushed vN", "cleared", or why not


@dataclass
class Plan:
    doc_digest: str
    version: int | str  # the config version, or the release (`fleet update`)
    select: dict[str, str]
    waves: list[list[str]]
    max_failures: int
    health_timeout_s: float
    require: str | None
    gateways: dict[str, GatewayPlan]
    status: str = "running"  # running | halted | done
    halt_reason: str = ""
    wave_times_s: dict[str, float] = field(default_factory=dict)
    wave_send_s: dict[str, float] = field(default_factory=dict)  # of which sending (to PUBACK)
    kind: str = "config"  # config (fleet rollout) | update (fleet update)
    run_id: str = ""  # update: the command id every gateway of this run gets

    def failures(self) -> list[GatewayPlan]:
        return [g for g in self.gateways.values() if g.result in FAILURES]

    def to_json(self) -> dict[str, Any]:
        return {
            "doc_digest": self.doc_digest,
            "version": self.version,
            "select": self.select,
            "waves": self.waves,
            "max_failures": self.max_failures,
            "health_timeout_s": self.health_timeout_s,
            "require": self.require,
            "status": self.status,
            "halt_reason": self.halt_reason,
            "wave_times_s": self.wave_times_s,
            "wave_send_s": self.wave_send_s,
            "kind": self.kind,
            "run_id": self.run_id,
            "gateways": {k: vars(g) for k, g in self.gateways.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        gws = {k: GatewayPlan(**v) for k, v in d.pop("gateways").items()}
        return cls(gateways=gws, **d)


def save(plan: Plan, path: Path) -> None:
    """Write-temp, fsync, rename, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = json.dumps(plan.to_json(), indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load(path: Path) -> Plan | None:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FleetError(f"{path}: cannot read the rollout state: {exc.strerror}") from exc
    try:
        return Plan.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError) as exc:
        raise FleetError(
            f"{path}: not a rollout state file ({exc}); move it away to start a new rollout"
        ) from exc
