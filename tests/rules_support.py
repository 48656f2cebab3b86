"""Build rule engines from TOML the way the daemon does (through config.load), and feed them."""

from __future__ import annotations

from collections.abc import Iterable

from gatewayd.config import RuleConfig, load
from gatewayd.reading import Lane, Quality, Reading, Record, Value
from gatewayd.rules import Rules

BASE = """
[uplink.auth]
kind = "none"
[[devices]]
id = "boiler"
driver = "modbus_tcp"
[[devices.points]]
id = "pressure"
table = "holding"
address = 0
[[devices.points]]
id = "flow"
table = "holding"
address = 1
"""
P = "boiler/pressure"


def rule_toml(*steps: str, name: str = "r", points: str = f'["{P}"]') -> str:
    """One [[rules]] table; each step is the body of a [[rules.steps]] table."""
    body = "".join(f"[[rules.steps]]\n{s.strip()}\n" for s in steps)
    return f'[[rules]]\nname = "{name}"\npoints = {points}\n{body}'


def configs(*rules: str) -> tuple[RuleConfig, ...]:
    return load(BASE + "\n".join(rules)).rules


def engine(*steps: str, points: str = f'["{P}"]') -> Rules:
    return Rules(configs(rule_toml(*steps, points=points)))


def feed(
    rules: Rules, seq: Iterable[tuple[int, Value]], point: str = P, q: Quality = Quality.GOOD
) -> list[Record]:
    """Readings one at a time (as polls arrive), all records out in order."""
    out: list[Record] = []
    for ts, v in seq:
        out += rules.process([Reading(point, ts, v, q)])
    return out


def values(records: Iterable[Record]) -> list[Value]:
    return [r.value for r in records]


def telemetry(records: Iterable[Record]) -> list[tuple[int, Value]]:
    return [(r.ts_ms, r.value) for r in records if r.lane is Lane.TELEMETRY]


def alarms(records: Iterable[Record]) -> list[tuple[int, Value, str | None]]:
    return [(r.ts_ms, r.value, r.reason) for r in records if r.lane is Lane.ALARM]
