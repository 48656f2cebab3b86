"""Device JWTs against the cloud stand-in: accepted, refused and reported, refreshed, held."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from uplink_harness import Harness, jwt_auth, until, uplink_cfg

from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry


async def _refused(tmp_path: Path, registry: Registry, **kw: object) -> tuple[Broker, Harness]:
    broker = await Broker(registry).start()
    auth = jwt_auth(**{k: v for k, v in kw.items() if k != "wall_clock"})
    cfg = uplink_cfg(broker.port, auth=auth, backoff_base_s=0.5, backoff_cap_s=0.5)
    extra = {"wall_clock": kw["wall_clock"]} if "wall_clock" in kw else {}
    h = await Harness.open(tmp_path, cfg, **extra)  # type: ignore[arg-type]
    await until(lambda: h.metrics.total("uplink_connect_failures") >= 3, 10, "3 refusals")
    return broker, h


def _registry(tmp_path: Path) -> Registry:
    registry = Registry("p1", "r1", "reg1")
    registry.add("gw-test", generate_key(tmp_path / "registered.key", "ES256"))
    return registry


def test_wrong_key_is_refused_reported_and_reminted_only_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        generate_key(tmp_path / "device.key", "ES256")  # not the registered one
        broker, h = await _refused(tmp_path, _registry(tmp_path))
        try:
            assert h.uplink.last_error == "refused: Not authorized"
            assert not h.uplink.connected
            reasons = {e.reason for e in broker.auth_log}
            assert reasons == {"signature does not match a registered key"}
            # The first refusal re-mints at once; later ones back off, with no more re-mints.
            assert broker.auth_log[1].at - broker.auth_log[0].at < 0.3
            assert h.metrics.total("uplink_auth_remints") == 1
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_wrong_audience_is_refused_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        broker, h = await _refused(tmp_path, registry, audience="other-project")
        try:
            assert h.uplink.last_error == "refused: Not authorized"
            assert broker.auth_log[-1].reason == "wrong audience"
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_expired_token_from_a_late_clock_is_refused_and_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        # Two hours behind (but after the build date, so not held): every token is stale.
        late = lambda: time.time() - 7200  # noqa: E731
        broker, h = await _refused(tmp_path, registry, lifetime_s=3600, wall_clock=late)
        try:
            assert h.uplink.last_error == "refused: Not authorized"
            assert broker.auth_log[-1].reason == "token expired"
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_rs256_second_key_with_kid_and_scope_is_accepted(tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = _registry(tmp_path)  # an ES256 key first, then the device's RS256 key
        registry.add("gw-test", generate_key(tmp_path / "device.key", "RS256"))
        broker = await Broker(registry).start()
        auth = jwt_auth(algorithm="RS256", key_id="key-2", claims=(("scope", "telemetry:write"),))
        h = await Harness.open(tmp_path, uplink_cfg(broker.port, auth=auth))
        try:
            ids = await h.append(10)
            await h.drained(10)
            assert sorted(broker.recorder.counts) == ids
            ok = broker.auth_log[-1]
            assert ok.accepted and ok.kid == "key-2"
            assert ok.claims["scope"] == "telemetry:write" and ok.claims["aud"] == "p1"
            assert ok.claims["exp"] - ok.claims["iat"] == 3600
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_config_and_commands_reach_the_gateway_and_state_is_rate_limited(tmp_path: Path) -> None:
    got: list[tuple[str, bytes]] = []
    calls = 0

    async def state() -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {"config_version": 7, "health": "ok", "counter": calls}  # changes every call

    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
        broker = await Broker(registry).start()
        states: list[tuple[float, bytes]] = []
        broker.on_message = lambda t, p: (
            states.append((time.monotonic(), p)) if (t == "/devices/gw-test/state") else None
        )
        broker.push_config("gw-test", b'{"version": 7}')  # retained before the gateway connects
        h = await Harness.open(
            tmp_path,
            uplink_cfg(broker.port, auth=jwt_auth()),
            on_message=lambda t, p: got.append((t, p)),
            state=state,
        )
        try:
            await until(lambda: got, 10, "retained config")
            broker.send_command("gw-test", b"reboot", subfolder="ops")
            await until(lambda: len(got) == 2, 10, "command")
            assert got == [
                ("/devices/gw-test/config", b'{"version": 7}'),
                ("/devices/gw-test/commands/ops", b"reboot"),
            ]
            await asyncio.sleep(3.0)
            assert len(states) >= 3
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(states)]
            assert min(gaps) > 0.9, gaps  # at most once per second
            assert json.loads(states[-1][1])["config_version"] == 7
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_world_readable_key_stops_the_daemon_at_start(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    generate_key(key, "ES256")
    key.chmod(0o644)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[gateway]\nstate_dir = "{tmp_path}"\n'
        '[uplink]\nproject = "p1"\nregion = "r1"\nregistry = "reg1"\ndevice = "gw"\n'
        '[uplink.auth]\naudience = "p1"\n'
    )
    p = subprocess.run(
        [sys.executable, "-m", "gatewayd", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2, p.stderr
    assert "readable by group or others (mode 0644)" in p.stderr
    assert "chmod 600" in p.stderr
