"""Broker failover: `[uplink] hosts` with real mosquittos and a real `gatewayd run`.

The gateway starts on the first broker; that broker is SIGKILLed; the gateway moves to the next
one and says so in its state document (`uplink_host`) and its log. Readings lost across a
failover are counted on the NATS cluster (test_fleet_nats.py), where the brokers share topics.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from helpers import Mosquitto, free_port, gateway_toml, start_gateway, wait_for, write_config
from paho.mqtt.enums import CallbackAPIVersion


class States:
    def __init__(self, port: int) -> None:
        self.docs: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"states-{port}")
        self.c.on_message = self._on_message
        self.c.on_connect = lambda cl, *a: cl.subscribe("/devices/gw-test/state", 1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.docs.append(json.loads(msg.payload))

    def last(self) -> dict[str, Any]:
        with self.lock:
            return self.docs[-1] if self.docs else {}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_a_killed_broker_moves_the_gateway_to_the_next_host(
    tmp_path: Path, mosquitto_bin: str, procs: list[subprocess.Popen[bytes]]
) -> None:
    a = Mosquitto(tmp_path / "a", free_port(), binary=mosquitto_bin)
    b = Mosquitto(tmp_path / "b", free_port(), binary=mosquitto_bin)
    a.start()
    b.start()
    (tmp_path / "state").mkdir()
    toml = gateway_toml(tmp_path / "state", a.port, free_port(), "", interval_ms=1000)
    hosts = f'hosts = ["127.0.0.1:{a.port}", "localhost:{b.port}"]'
    toml = toml.replace(f'host = "127.0.0.1"\nport = {a.port}\n', hosts + "\n", 1)
    assert hosts in toml
    start_gateway(write_config(tmp_path / "gw.toml", toml), procs, tmp_path / "gw.log")
    on_a, on_b = States(a.port), States(b.port)
    try:
        wait_for(lambda: on_a.last().get("uplink_host") == f"127.0.0.1:{a.port}", 30, "on a")
        a.kill()
        wait_for(lambda: on_b.last().get("uplink_host") == f"localhost:{b.port}", 30, "on b")
    finally:
        on_a.close()
        on_b.close()
        b.stop()
    log = (tmp_path / "gw.log").read_text()
    assert f"uplink_failover from=127.0.0.1:{a.port} to=localhost:{b.port}" in log, log


BASE = '[uplink]\n{x}\n[uplink.auth]\nkind = "none"\n'


def test_hosts_parse_with_the_default_port_and_one_host_stays_valid() -> None:
    from gatewayd.config import load

    up = load(BASE.format(x='hosts = ["a:8883", "b", "[::1]:1883"]\nport = 1884')).uplink
    assert up.addresses() == (("a", 8883), ("b", 1884), ("::1", 1883))
    assert (up.host, up.port) == ("a", 8883), "host and port are the first entry"
    single = load(BASE.format(x='host = "h"\nport = 5')).uplink
    assert single.addresses() == (("h", 5),)


def test_bad_hosts_are_refused_with_the_place() -> None:
    import pytest

    from gatewayd.config import ConfigError, load

    for x, message in [
        ("hosts = []", "uplink.hosts: is empty"),
        ('hosts = ["a b:1"]', "uplink.hosts[0]: 'a b:1' is not host or host:port"),
        ('hosts = ["a:0"]', "uplink.hosts[0]: 'a:0' is not host or host:port"),
        ('host = "x"\nhosts = ["a"]', "uplink.hosts: is set together with host"),
        ('hosts = ["a", "a:8883"]', "uplink.hosts: lists a broker twice"),
        ("hosts = [1]", "uplink.hosts[0]: expected a string"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(BASE.format(x=x))
        assert str(err.value).startswith(message), str(err.value)


def test_a_refused_subscription_is_asked_for_again_until_granted(tmp_path: Path) -> None:
    """NATS refuses SUBSCRIBE (0x80) while JetStream recovers from a lost node, and keeps the
    session: without asking again, a failed-over gateway would never hear a config push."""
    import asyncio

    from uplink_harness import Harness, until, uplink_cfg

    from gatewayd_sim.cloud import Broker

    async def scenario() -> None:
        broker = await Broker().start()
        refusing = True
        allowed = broker.allowed
        broker.allowed = lambda s, t: not (refusing and "/config" in t) and allowed(s, t)  # type: ignore[method-assign]
        got: list[bytes] = []
        h = await Harness.open(
            tmp_path, uplink_cfg(broker.port), on_message=lambda t, p: got.append(p)
        )
        try:
            await until(lambda: h.metrics.total("uplink_subscribe_refused"), 10, "a refusal")
            refusing = False  # the cluster recovered
            broker.push_config("gw-test", b'{"version": 9}')  # retained: sent at a subscribe
            await until(lambda: got == [b'{"version": 9}'], 20, "the push, once granted")
            assert h.uplink.connected and h.metrics.total("uplink_connects") == 1, "one session"
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())


def test_fleet_keeps_its_session_when_a_subscription_is_refused_and_asks_again() -> None:
    """CI, stop 22: after a NATS node was SIGKILLed, the rollout's pushes went unacknowledged for
    90 s. NATS refused fleet's SUBSCRIBE while JetStream recovered; fleet dropped the session at
    each refusal and tried the next node, and each new session (its deletion, its consumers) is
    more JetStream work for the recovering cluster. Fleet keeps the session and asks again."""
    import asyncio

    from gatewayd.fleet.broker import BrokerSettings, FleetBroker
    from gatewayd_sim.cloud import Broker

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    broker = asyncio.run_coroutine_threadsafe(Broker().start(), loop).result(10)
    broker.publish("/devices/gw-1/state", b'{"config_version": 4}', retain=True)
    refusals = {"left": 2}

    def allowed_filter(s: Any, pattern: str) -> bool:
        if pattern.endswith("/config") and refusals["left"] > 0:
            refusals["left"] -= 1
            return False
        return True

    broker.allowed_filter = allowed_filter  # type: ignore[method-assign]
    fleet = FleetBroker(BrokerSettings(hosts=(("127.0.0.1", broker.port),)))
    try:
        fleet.connect()
        assert refusals["left"] == 0, "asked again until granted"
        assert (fleet.connects, broker.connections) == (1, 1), "one session throughout"
        fleet.settle(quiet_s=0.3, max_s=3.0)
        assert fleet.states["gw-1"].doc == {"config_version": 4}
    finally:
        fleet.close()
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
