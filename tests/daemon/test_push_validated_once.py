"""A pushed configuration is parsed once: its result flows on to the candidate, the verdict,
the commit and a rollback to it, and a stored candidate is parsed once at start.

Counted where every parse of a document asks the driver registry for its devices' options
(config.parse's lookup, once per driver and document): the manager and the parser run for real.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

import gatewayd.config.parse as parse
from gatewayd.config import GatewayConfig, example_path, load_document
from gatewayd.metrics import Metrics
from gatewayd.remote_config import ConfigManager, ConfigStore, Outcome
from gatewayd.remote_config.manager import startup_config
from gatewayd.remote_config.store import Stored

BASE: dict[str, Any] = tomllib.loads(example_path().read_text())
DRIVER = BASE["devices"][0]["driver"]


class _Target:
    def __init__(self) -> None:
        self.healthy = True

    async def reconfigure(self, cfg: GatewayConfig, trial: bool = True) -> None:
        pass

    async def wait_healthy(self, deadline_s: float) -> str | None:
        return None if self.healthy else "not healthy (set by the test)"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry per parse of a document naming DRIVER (the real lookup still answers)."""
    seen: list[str] = []
    real = parse.entry_point_options

    def counting(kind: str, place: str) -> Any:
        if kind == DRIVER:
            seen.append(place)
        return real(kind, place)

    monkeypatch.setattr(parse, "entry_point_options", counting)
    return seen


def _doc(version: int) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(BASE))
    doc["version"] = version
    doc["devices"][0]["interval_ms"] = 1000 + version  # a change, so it is tried
    return doc


def _manager(tmp: Path, target: _Target) -> tuple[ConfigManager, list[dict[str, Any]]]:
    cfg = load_document(BASE)
    outcomes: list[dict[str, Any]] = []
    store = ConfigStore(tmp / "config")
    m = ConfigManager(
        target, store, cfg, Stored(cfg.version, BASE), outcomes.append, Metrics(), tmp
    )
    return m, outcomes


def test_an_applied_push_is_parsed_once(tmp_path: Path, parses: list[str]) -> None:
    m, outcomes = _manager(tmp_path, _Target())
    parses.clear()
    assert asyncio.run(m.handle(json.dumps(_doc(2)).encode())) is Outcome.APPLIED
    assert outcomes[-1]["status"] == "applied"
    assert len(parses) == 1, parses


def test_a_rollback_to_an_applied_push_parses_nothing_again(
    tmp_path: Path, parses: list[str]
) -> None:
    target = _Target()
    m, outcomes = _manager(tmp_path, target)
    parses.clear()
    assert asyncio.run(m.handle(json.dumps(_doc(2)).encode())) is Outcome.APPLIED
    target.healthy = False
    assert asyncio.run(m.handle(json.dumps(_doc(3)).encode())) is Outcome.ROLLED_BACK
    assert outcomes[-1]["reason"].endswith("back on version 2")
    assert len(parses) == 2, parses  # one per push: version 2 is not parsed for the rollback


def test_a_stored_candidate_is_parsed_once_from_start_to_verdict(
    tmp_path: Path, parses: list[str]
) -> None:
    local = load_document(BASE)
    store = ConfigStore(tmp_path / "config")
    store.save_candidate(Stored(2, _doc(2), starts=1))
    parses.clear()
    start = startup_config(local, BASE, store)
    assert start.trial is not None
    outcomes: list[dict[str, Any]] = []
    m = ConfigManager(
        _Target(), store, local, start.lkg, outcomes.append, Metrics(), tmp_path
    )

    async def until_judged() -> None:
        task = asyncio.create_task(m.run(start.trial))
        while not outcomes:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(until_judged(), 60))
    assert outcomes[-1]["status"] == "applied"
    assert store.applied() == Stored(2, _doc(2))
    assert len(parses) == 1, parses
