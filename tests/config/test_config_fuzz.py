"""Fuzzing the daemon's side of configuration (issue 14): local files, pushed documents, and the
remote-config manager fed with them.

- parsing and validation raise nothing but ConfigError (PushRejected for a push's envelope);
- a push always gets an outcome, and the last good configuration stays one that loads, kept
  unless an outcome says otherwise.

The manager runs with a real ConfigStore on disk; its target is a stand-in for the running
gateway that applies nothing and answers the health check as the example says. The same
properties against a real daemon process and broker: bench/fuzz_config.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gatewayd.config import ConfigError, GatewayConfig, example_path, load_document, parse_bytes
from gatewayd.metrics import Metrics
from gatewayd.remote_config import ConfigManager, ConfigStore, Outcome, PushRejected, decode_push
from gatewayd.remote_config.store import Stored

BASE: dict[str, Any] = tomllib.loads(example_path().read_text())
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Values a hostile tester reaches for first, beside hypothesis' own.
NASTY = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        10**400,
        2**53,
        -(2**63),
        1e308,
        "",
        "a\n",
        "{device",
        "{devcie}",
        "{device.__class__}",
        "0.0.0.0:9108",
        "/etc/shadow",
        "\x00",
        "é" * 70,
    ]
)
LEAF = st.one_of(
    NASTY,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
JSON = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """The example document with a few values replaced, keys added or removed."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["x", "id", "port", "version", "listen"]))] = draw(JSON)
        else:
            parent[path[-1]] = draw(JSON)
    return doc


@SETTINGS
@given(mutated())
def test_validation_raises_only_config_error(doc: dict[str, Any]) -> None:
    try:
        cfg = load_document(doc)
    except ConfigError as exc:
        assert exc.place and str(exc)
        return
    assert isinstance(cfg, GatewayConfig)
    json.dumps(doc, allow_nan=False)  # whatever validates is strict JSON


@SETTINGS
@given(JSON)
def test_any_json_document_raises_only_config_error(doc: Any) -> None:
    with contextlib.suppress(ConfigError):
        load_document(doc)


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        st.sampled_from([b"a = [" * 5000, b"x = {a = " * 3000, b"\xff\xfe", b"version = nan"]),
        mutated().map(lambda d: _toml(d).encode()),
    )
)
def test_any_local_file_raises_only_config_error(raw: bytes) -> None:
    with contextlib.suppress(ConfigError):
        load_document(parse_bytes(raw, source="gateway.toml"))


@SETTINGS
@given(
    st.one_of(
        st.binary(max_size=300),
        mutated().map(lambda d: json.dumps(d).encode()),
        st.sampled_from([b'{"a":' * 5000, b'{"a":1,"a":2}', b'{"version": NaN}', b"[]"]),
    )
)
def test_any_push_envelope_raises_only_push_rejected(raw: bytes) -> None:
    with contextlib.suppress(PushRejected):
        decode_push(raw, 64 * 1024)


class _Target:
    """Applies nothing; healthy or not as the example drew it."""

    def __init__(self) -> None:
        self.healthy = True
        self.cfg: GatewayConfig | None = None

    async def reconfigure(self, cfg: GatewayConfig, trial: bool = True) -> None:
        self.cfg = cfg

    async def wait_healthy(self, deadline_s: float) -> str | None:
        return None if self.healthy else "not healthy (drawn by the test)"


def _manager(tmp: Path) -> tuple[ConfigManager, _Target, list[dict[str, Any]]]:
    base = json.loads(json.dumps(BASE))  # its state_dir is never opened: the store is in tmp
    target = _Target()
    outcomes: list[dict[str, Any]] = []
    cfg = load_document(base)
    m = ConfigManager(
        target,
        ConfigStore(tmp / "config"),
        cfg,
        Stored(cfg.version, base),
        outcomes.append,
        Metrics(),
        tmp,
    )
    return m, target, outcomes


@st.composite
def pushes(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    """(payload, healthy) pairs: mostly valid-looking documents with rising versions."""
    out = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["valid", "mutated", "mutated", "bytes"]))
        if kind == "bytes":
            payload = draw(st.binary(max_size=200))
        else:
            doc = json.loads(json.dumps(BASE)) if kind == "valid" else draw(mutated())
            if kind == "valid" or draw(st.booleans()):
                doc["version"] = i + 2
                doc.setdefault("devices", [{}])
                if kind == "valid":
                    doc["devices"][0]["interval_ms"] = 1000 + i
            payload = json.dumps(doc).encode()
        out.append((payload, draw(st.booleans())))
    return out


@SETTINGS
@given(pushes())
def test_every_push_gets_an_outcome_and_the_last_good_config_is_kept(
    tmp_path_factory: Any, seq: list[tuple[bytes, bool]]
) -> None:
    tmp = tmp_path_factory.mktemp("mgr")
    m, target, outcomes = _manager(tmp)

    async def go() -> None:
        for payload, healthy in seq:
            target.healthy = healthy
            before_lkg, n = m.lkg, len(outcomes)
            result = await m.handle(payload)
            assert isinstance(result, Outcome)
            event(str(result))
            assert len(outcomes) <= n + 1
            if len(outcomes) == n:  # silent only for a redelivery of what was already reported
                assert m.lkg == before_lkg
                continue
            out = outcomes[-1]
            assert out["status"] == result
            json.dumps(out, allow_nan=False)
            if result is Outcome.APPLIED:
                assert m.store.applied() is None or m.store.applied() == Stored(
                    m.lkg.version, m.lkg.document
                )
            else:
                assert m.lkg == before_lkg, "only an applied push changes the last good config"
            load_document(m.lkg.document)  # the last good config always loads
            assert m.store.candidate() is None

    asyncio.run(go())


def test_pushes_queued_behind_a_candidate_each_get_an_outcome(tmp_path: Path) -> None:
    m, target, outcomes = _manager(tmp_path)
    release = asyncio.Event()

    async def slow_health(deadline_s: float) -> str | None:
        await release.wait()
        return None

    target.wait_healthy = slow_health  # type: ignore[method-assign]

    async def go() -> None:
        task = asyncio.create_task(m.run())
        for version in range(2, 12):
            doc = json.loads(json.dumps(BASE))
            doc["version"] = version
            doc["devices"][0]["interval_ms"] = 1000 + version
            m.on_push(json.dumps(doc).encode())
            await asyncio.sleep(0.01)  # the first is being judged when the others arrive
        release.set()
        while len(outcomes) < 10:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(go(), 30))
    by_version = {o["version"]: o["status"] for o in outcomes}
    assert by_version == {2: "applied", **{v: "superseded" for v in range(3, 11)}, 11: "applied"}
    assert m.lkg.version == 11


def _toml(doc: dict[str, Any]) -> str:
    """A rough TOML rendering (enough for the fuzzer; unrenderable values become strings)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float) and not isinstance(v, bool):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), str(v)[:40])
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v if not isinstance(x, dict)) + "]"
        if isinstance(v, dict):
            return (
                "{" + ", ".join(f"{json.dumps(str(k))} = {scalar(x)}" for k, x in v.items()) + "}"
            )
        return json.dumps(str(v))

    return "\n".join(f"{json.dumps(str(k))} = {scalar(v)}" for k, v in doc.items()) + "\n"


def test_identity_changes_only_through_the_local_file(tmp_path: Path) -> None:
    m, _, outcomes = _manager(tmp_path)
    doc = json.loads(json.dumps(BASE))
    doc["version"] = 2
    doc["uplink"]["device"] = "moved"
    assert asyncio.run(m.handle(json.dumps(doc).encode())) is Outcome.REJECTED
    assert outcomes[-1]["reason"].startswith("uplink.device: would change 'demo-gw-1' to 'moved'")
    doc["version"] = 3
    assert asyncio.run(m.handle(doc, trusted=True)) is Outcome.APPLIED
