"""What one `gatewayd fleet` session costs a NATS cluster's JetStream: nothing per subscription.

NATS (2.9, Debian's) backs every MQTT QoS 1 subscription with a replicated JetStream consumer,
created at SUBSCRIBE and deleted at disconnect, each a request that fails after 4 s when the
cluster is busy (a lost node, a reconnecting fleet): bench/fleet.py saw fleet's own
subscriptions refused for minutes after a node was SIGKILLed. Fleet reads state and config
documents that are retained and republished, so it subscribes at QoS 0 and needs no consumer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binary
from helpers import wait_for
from nats_cluster import USERS, NatsCluster

from gatewayd.fleet.broker import FleetBroker, load_settings


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path_factory.mktemp("nats") / "nats", require_binary("nats-server"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _consumers(c: NatsCluster) -> int:
    return max(int(n.jsz().get("consumers", 0)) for n in c.nodes)


def test_a_fleet_session_creates_no_jetstream_consumer(cluster: NatsCluster) -> None:
    before = _consumers(cluster)
    settings = load_settings(
        None, host=",".join(cluster.mqtt_hosts), username="fleet", password=USERS["fleet"]
    )
    broker = FleetBroker(settings)
    broker.connect()  # returns after the SUBACK
    try:
        # A consumer made for the subscription shows within a second; give it several.
        with pytest.raises(AssertionError):
            wait_for(lambda: _consumers(cluster) > before, 5, "a consumer for fleet", 0.2)
        assert broker.connected
    finally:
        broker.close()


def test_fleet_still_sees_retained_documents_published_at_qos_1(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    settings = load_settings(
        None, host=",".join(cluster.mqtt_hosts), username="fleet", password=USERS["fleet"]
    )
    pusher = FleetBroker(settings)
    pusher.connect()
    info = pusher.publish("/devices/gw-q/state", b'{"ts": 1, "health": "ok"}', retain=True)
    assert info is not None and pusher.wait_published([info])[id(info)]
    pusher.close()
    reader = FleetBroker(settings)
    reader.connect()
    try:
        wait_for(lambda: "gw-q" in reader.states, 10, "the retained state document")
        assert reader.states["gw-q"].doc["health"] == "ok"
    finally:
        reader.publish("/devices/gw-q/state", b"", retain=True)
        reader.close()
