"""ClearBlade IoT Core's differences from Cloud IoT Core, under `profile = "clearblade"`.

TLS 1.2 or newer, an idle limit of 20 minutes whatever the keepalive (the session publishes
before it), and QoS 1 messages dropped without a PUBACK when the broker is busy (the PUBACK
deadline and the resend cover it). Against real sockets: mosquitto and the cloud stand-in.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tomllib
from pathlib import Path
from typing import Any

from brokers import Subscriber
from helpers import Mosquitto
from uplink_harness import Harness, jwt_auth, until, uplink_cfg

from gatewayd.config import GatewayConfig, TlsConfig, example_path, load, load_document
from gatewayd.config.profiles import limits_of
from gatewayd.metrics import Metrics
from gatewayd.remote_config import ConfigManager, ConfigStore
from gatewayd.remote_config.store import Stored
from gatewayd.uplink.connect import make_client
from gatewayd.uplink.credentials import NoAuth
from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Recorder, Registry

STATE = "/devices/gw-test/state"
CLEARBLADE = """
[uplink]
profile = "clearblade"
project = "p1"
region = "us-central1"
registry = "reg1"
device = "gw-1"
[uplink.auth]
audience = "p1"
"""


def test_the_profile_carries_clearblades_limits() -> None:
    up = load(CLEARBLADE).uplink
    limits = limits_of(up)
    assert (limits.max_idle_s, limits.tls_minimum, limits.retained) == (1200, "1.2", False)
    assert limits.protocols == ("3.1.1",)
    assert (
        limits_of(load(CLEARBLADE.replace("clearblade", "cloud-iot-core")).uplink).max_idle_s
        is None
    )


def test_clearblade_sets_tls_1_2_as_the_minimum_on_the_context() -> None:
    """Python 3.10+ already defaults to 1.2 for clients; the profile does not rely on it."""
    cfg = uplink_cfg(8883, profile="clearblade", tls=TlsConfig())
    context = make_client(cfg, "c", NoAuth())._ssl_context
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


def _idle_publishes(mosquitto: Mosquitto, tmp: Path, profile: str) -> int:
    """State messages a gateway with no records publishes in a few seconds under `profile`,
    with the idle limit shortened from 20 minutes to 1 s."""
    sub = Subscriber(mosquitto.port, [STATE], client_id=f"idle-{profile or 'none'}")

    async def scenario() -> int:
        await until(lambda: sub.subscribed, 10, "the subscriber")
        h = await Harness.open(tmp, uplink_cfg(mosquitto.port, profile=profile))
        if profile:
            assert h.uplink.max_idle_s == 1200  # the profile's; shortened for the test
            h.uplink.max_idle_s = 1.0
        try:
            await until(lambda: h.uplink.subscribed, 10, "connected")
            await asyncio.sleep(6.0)
            with sub.lock:
                return len(sub.messages)
        finally:
            await h.close()

    try:
        return asyncio.run(scenario())
    finally:
        sub.close()


def test_a_silent_session_publishes_before_clearblades_idle_limit(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _idle_publishes(mosquitto, tmp_path / "a", "clearblade") >= 3
    assert _idle_publishes(mosquitto, tmp_path / "b", "") == 0  # no idle limit: silence


class _Dropping(Recorder):
    """The stand-in's record count, for a broker that drops (not just leaves unacked) what it
    does not acknowledge: ClearBlade when busy."""

    broker: Broker | None = None

    def feed(self, payload: bytes) -> None:
        if self.broker is None or self.broker.acks_enabled:
            super().feed(payload)


def test_messages_dropped_without_puback_are_sent_again_nothing_lost(tmp_path: Path) -> None:
    registry = Registry("p1", "r1", "reg1")
    registry.add("gw-test", generate_key(tmp_path / "device.key", "ES256"))
    recorder = _Dropping()

    async def scenario() -> tuple[list[int], int]:
        broker = await Broker(registry, recorder=recorder).start()
        recorder.broker = broker
        cfg = uplink_cfg(broker.port, profile="clearblade", auth=jwt_auth(), puback_timeout_s=2.0)
        h = await Harness.open(tmp_path, cfg)
        try:
            h.produce(per_tick=10, tick_s=0.02)
            for _ in range(2):
                await until(lambda: recorder.unique > 500, 20, "delivery")
                broker.acks_enabled = False  # busy: messages vanish, no PUBACK
                await until(
                    lambda: h.metrics.total("uplink_puback_timeouts") >= 1, 20, "a PUBACK timeout"
                )
                await asyncio.sleep(0.5)
                broker.acks_enabled = True
            await h.halt()
            await h.drained(60)
            return h.sent, int(h.metrics.total("uplink_puback_timeouts"))
        finally:
            await h.close()
            await broker.stop()

    ids, timeouts = asyncio.run(scenario())
    assert timeouts >= 2
    assert not recorder.missing(set(ids)), recorder.report(set(ids))


class _Target:
    """The running gateway as the manager sees it: applies, always healthy."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def reconfigure(self, cfg: GatewayConfig, trial: bool = True) -> None:
        self.applied.append(cfg.version)

    async def wait_healthy(self, deadline_s: float) -> str | None:
        return None


def _redelivered(tmp: Path, profile: str) -> tuple[list[int], list[dict[str, Any]], float]:
    """Pushes v2, v3, then v2 again (a QoS 1 redelivery); what was applied and reported."""
    base: dict[str, Any] = tomllib.loads(example_path().read_text())
    base["uplink"]["profile"] = profile
    cfg = load_document(base)
    target, outcomes, metrics = _Target(), [], Metrics()
    m = ConfigManager(
        target,
        ConfigStore(tmp / "config"),
        cfg,
        Stored(cfg.version, base),
        outcomes.append,
        metrics,
        tmp,
    )

    def doc(version: int) -> bytes:
        d = json.loads(json.dumps(base))
        d["version"] = version
        d["devices"][0]["interval_ms"] = 1000 + version
        return json.dumps(d).encode()

    async def scenario() -> None:
        for v in (2, 3, 2):
            await m.handle(doc(v))

    asyncio.run(scenario())
    return target.applied, outcomes, metrics.total("config_outcomes")


def test_an_older_config_redelivered_by_clearblade_is_neither_applied_nor_counted(
    tmp_path: Path,
) -> None:
    (tmp_path / "cb").mkdir()
    applied, outcomes, counted = _redelivered(tmp_path / "cb", "clearblade")
    assert applied == [2, 3]
    assert [(o["version"], o["status"]) for o in outcomes] == [(2, "applied"), (3, "applied")]
    assert counted == 2
    # Where the cloud retains, an older version is a stale push someone made: refused, reported.
    (tmp_path / "iot").mkdir()
    applied, outcomes, counted = _redelivered(tmp_path / "iot", "cloud-iot-core")
    assert applied == [2, 3]
    assert [(o["version"], o["status"]) for o in outcomes][-1] == (2, "rejected")
