"""The uplink against a real RabbitMQ 3.10: MQTT plugin, OAuth 2 backend verifying device JWTs.

The broker verifies ES256 and RS256 tokens by `kid` against its signing keys, checks `aud`
(its resource_server_id) and the `scope` claim; topics go without the leading '/' (RabbitMQ
maps '/' to '.' in routing keys, and the scopes match those). Records are counted by id at a
subscriber of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import RESOURCE, RabbitMq, Subscriber, scopes
from uplink_harness import Collector, Harness, jwt_auth, until, uplink_cfg

from gatewayd.config import ConfigError, TopicsConfig, UplinkConfig, load
from gatewayd.uplink.device_jwt import generate_key, load_private_key, mint_jwt

TOPICS = TopicsConfig(
    events="devices/{device}/events",
    state="devices/{device}/state",
    config="devices/{device}/config",
    commands="devices/{device}/commands/#",
    command_results="devices/{device}/events/command-results",
)


@dataclasses.dataclass
class Rabbit:
    broker: RabbitMq
    keys: Path  # es.key, rs.key (registered as kid "es", "rs"), admin.key (the subscriber's)

    def collector(self, topic: str = "devices/#") -> Collector:
        key = load_private_key(self.keys / "admin.key", "ES256")
        everything = f"{RESOURCE}.read:*/*/* {RESOURCE}.write:*/*/* {RESOURCE}.configure:*/*"
        token = mint_jwt(key, "ES256", RESOURCE, 3600, "admin", {"scope": everything})
        c = Collector(self.broker.port, topic=topic, username="collector", password=token)
        return c


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rabbit]:
    keys = tmp_path_factory.mktemp("keys")
    pems = {
        "es": generate_key(keys / "es.key", "ES256"),
        "rs": generate_key(keys / "rs.key", "RS256"),
        "admin": generate_key(keys / "admin.key", "ES256"),
    }
    b = RabbitMq(tmp_path_factory.mktemp("rabbitmq"), pems).start()
    try:
        yield Rabbit(b, keys)
    finally:
        b.stop()


def _cfg(rabbit: Rabbit, algorithm: str = "ES256", **changes: object) -> UplinkConfig:
    kid = "es" if algorithm == "ES256" else "rs"
    auth = jwt_auth(
        str(rabbit.keys / f"{kid}.key"),
        algorithm=algorithm,
        key_id=kid,
        audience=RESOURCE,
        username="{device}",
        claims=(("scope", scopes()), ("sub", "{device}")),
    )
    return uplink_cfg(rabbit.broker.port, **{"auth": auth, "topics": TOPICS, **changes})


def _subscribed(c: Collector) -> bool:
    return c.subscribed > 0


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_publishes_end_to_end_with_a_verified_device_jwt(
    rabbit: Rabbit, tmp_path: Path, algorithm: str
) -> None:
    collector = rabbit.collector()
    device = f"gw-{algorithm.lower()}"

    async def scenario() -> list[int]:
        await until(lambda: _subscribed(collector), 20, "the subscriber")
        h = await Harness.open(tmp_path, _cfg(rabbit, algorithm, device=device))
        try:
            ids = await h.append(2000)
            await h.drained(60)
            await until(lambda: not collector.missing(ids), 20, "every record at the subscriber")
            assert h.uplink.subscribed and not h.uplink._refused
            assert h.metrics.total("acked_records") == len(ids)
            return ids
        finally:
            await h.close()

    try:
        ids = asyncio.run(scenario())
    finally:
        collector.close()
    assert not collector.missing(ids)
    assert collector.duplicates() == 0


def test_each_gateway_is_its_own_user_through_templated_claims(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    async def scenario() -> str:
        gateways = []
        for device in ("gw-a", "gw-b"):
            (tmp_path / device).mkdir()
            gateways.append(await Harness.open(tmp_path / device, _cfg(rabbit, device=device)))
        try:
            for h in gateways:
                await until(lambda h=h: h.uplink.subscribed, 20, "connected")  # type: ignore[misc]
            return await asyncio.to_thread(rabbit.broker.ctl, "list_mqtt_connections", "user")
        finally:
            for h in gateways:
                await h.close()

    out = asyncio.run(scenario())
    users = out.split()
    assert "gw-a" in users and "gw-b" in users, users
    assert "unused" not in users


def test_token_refresh_under_load_loses_nothing(rabbit: Rabbit, tmp_path: Path) -> None:
    collector = rabbit.collector()
    auth = dataclasses.replace(_cfg(rabbit).auth, lifetime_s=20)

    async def scenario() -> list[int]:
        await until(lambda: _subscribed(collector), 20, "the subscriber")
        h = await Harness.open(tmp_path, _cfg(rabbit, device="gw-refresh", auth=auth))
        try:
            h.produce(per_tick=10, tick_s=0.05)  # 200 records/s
            await until(lambda: h.metrics.total("uplink_token_refreshes") >= 3, 120, "3 refreshes")
            await h.halt()
            await h.drained(60)
            await until(lambda: not collector.missing(h.sent), 20, "every record")
            assert h.metrics.total("uplink_token_refreshes") >= 3
            return h.sent
        finally:
            await h.close()

    try:
        ids = asyncio.run(scenario())
    finally:
        collector.close()
    assert len(ids) > 1000
    assert not collector.missing(ids)


def test_a_wrong_key_is_refused_naming_the_settings_and_nothing_is_lost(
    rabbit: Rabbit, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gatewayd.uplink")
    generate_key(tmp_path / "unregistered.key", "ES256")
    wrong = dataclasses.replace(_cfg(rabbit).auth, private_key=str(tmp_path / "unregistered.key"))
    collector = rabbit.collector()

    async def scenario() -> list[int]:
        await until(lambda: _subscribed(collector), 20, "the subscriber")
        h = await Harness.open(tmp_path, _cfg(rabbit, device="gw-wrong", auth=wrong))
        try:
            ids = await h.append(100)
            await until(lambda: h.metrics.total("uplink_connect_failures") >= 2, 30, "refusals")
            assert h.uplink.last_error == "refused: Bad user name or password"
            assert await h.depth() == len(ids)  # every record still in the buffer
        finally:
            await h.close()
        # The right key, the same buffer: everything is delivered.
        good = await Harness.open(tmp_path, _cfg(rabbit, device="gw-wrong"))
        try:
            await good.drained(30)
        finally:
            await good.close()
        return ids

    try:
        ids = asyncio.run(scenario())
        asyncio.run(until(lambda: not collector.missing(ids), 20, "every record"))
    finally:
        collector.close()
    first = next(
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("uplink_connect_failed") and r.levelno >= logging.WARNING
    )
    for setting in ("private_key", "key_id ('es')", f"audience ('{RESOURCE}')", "clock"):
        assert setting in first, (setting, first)


def test_a_dot_in_the_device_id_is_rewritten_by_rabbitmq_so_check_refuses_it(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    """RabbitMQ accepts 'ev.1' and delivers its data under devices/ev/1/...: silently wrong."""
    collector = rabbit.collector()
    topics: list[str] = []
    collector.client.on_message = lambda c, u, msg: topics.append(msg.topic)
    auth = dataclasses.replace(
        _cfg(rabbit).auth, claims=(("scope", scopes("ev.1")), ("sub", "{device}"))
    )

    async def scenario() -> None:
        await until(lambda: _subscribed(collector), 20, "the subscriber")
        h = await Harness.open(tmp_path, _cfg(rabbit, device="ev.1", auth=auth))
        try:
            await h.append(5)
            await h.drained(30)
            await until(lambda: topics, 20, "a message at the subscriber")
        finally:
            await h.close()

    try:
        asyncio.run(scenario())
    finally:
        collector.close()
    assert set(topics) == {"devices/ev/1/events"}, topics  # not what the gateway published

    toml = f"""
[uplink]
profile = "mqtt"
broker = "rabbitmq"
host = "127.0.0.1"
port = {rabbit.broker.port}
device = "ev.1"
[uplink.auth]
kind = "none"
[uplink.tls]
enabled = false
[uplink.topics]
events = "devices/{{device}}/events"
"""
    with pytest.raises(ConfigError) as err:
        load(toml)
    text = str(err.value)
    assert text.startswith("uplink.topics.events: 'devices/ev.1/events' contains '.'"), text
    assert "RabbitMQ" in text, text


def test_the_example_configs_scope_hint_works_as_written(rabbit: Rabbit, tmp_path: Path) -> None:
    example = Path(__file__).parent.parent.parent / "config" / "examples" / "gateway.toml"
    hint = next(x for x in example.read_text().splitlines() if x.startswith("# scope = "))
    scope = hint.removeprefix("# scope = ").strip().strip('"')
    auth = dataclasses.replace(_cfg(rabbit).auth, claims=(("scope", scope),))
    collector = rabbit.collector()

    async def scenario() -> list[int]:
        await until(lambda: _subscribed(collector), 20, "the subscriber")
        h = await Harness.open(tmp_path, _cfg(rabbit, device="gw-hint", auth=auth))
        try:
            ids = await h.append(200)
            await h.drained(30)
            await until(lambda: h.uplink.subscribed, 10, "the SUBACK")
            assert not h.uplink._refused, h.uplink._refused  # config and commands granted
            return ids
        finally:
            await h.close()

    try:
        ids = asyncio.run(scenario())
        asyncio.run(until(lambda: not collector.missing(ids), 20, "every record"))
    finally:
        collector.close()


def test_sigkill_and_restart_under_load_loses_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Its own broker (the module's keeps serving the others): killed, restarted on the same
    ports and state; the subscriber's persistent session is a durable queue that survives."""
    keys = tmp_path / "keys"
    keys.mkdir()
    pems = {
        "es": generate_key(keys / "es.key", "ES256"),
        "admin": generate_key(keys / "admin.key", "ES256"),
    }
    b = RabbitMq(tmp_path / "rabbitmq", pems).start()
    rabbit = Rabbit(b, keys)
    admin = load_private_key(keys / "admin.key", "ES256")
    everything = f"{RESOURCE}.read:*/*/* {RESOURCE}.write:*/*/* {RESOURCE}.configure:*/*"
    token = mint_jwt(admin, "ES256", RESOURCE, 3600, "admin", {"scope": everything})
    sub = Subscriber(b.port, ["devices/gw-restart/events"], auth=("collector", token))
    reconnects: list[float] = []

    async def scenario() -> list[int]:
        await until(lambda: sub.subscribed, 20, "the subscriber")
        cfg = _cfg(rabbit, device="gw-restart", backoff_cap_s=0.5)
        h = await Harness.open(tmp_path, cfg)
        try:
            h.produce(per_tick=10, tick_s=0.05)  # 200 records/s
            await until(lambda: h.metrics.total("acked_records") > 300, 30, "delivery")
            b.kill()
            await until(lambda: not h.uplink.connected, 20, "the uplink to see it")
            await asyncio.sleep(1.0)
            started = time.monotonic()
            await asyncio.to_thread(b.start)
            listening = time.monotonic()
            reconnects.append(listening - started)
            before = h.metrics.total("acked_records")
            await until(lambda: h.metrics.total("acked_records") > before, 60, "delivery again")
            reconnects.append(time.monotonic() - listening)
            await asyncio.sleep(2.0)
            await h.halt()
            await h.drained(60)
            await until(lambda: not sub.missing(h.sent), 60, "every record")
            return h.sent
        finally:
            await h.close()

    try:
        ids = asyncio.run(scenario())
    finally:
        sub.close()
        b.stop()
    print(
        f"rabbitmq restart: MQTT port listening {reconnects[0]:.2f} s after the start, first "
        f"PUBACK {reconnects[1]:.2f} s after that"
    )
    assert not sub.missing(ids)
