"""What a user reads when the uplink cannot work: each failure named, with the setting to check.

Against real brokers (mosquitto, the cloud stand-in); the log lines are read as a user would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Mosquitto
from uplink_harness import DynsecMosquitto, Harness, NatsServer, jwt_auth, until, uplink_cfg

from gatewayd.config import AuthConfig, TlsConfig
from gatewayd.uplink.device_jwt import generate_key
from gatewayd_sim.cloud import Broker, Registry

PASSWORD = AuthConfig(kind="password", username="gw", password="s3cret")


def _lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "gatewayd.uplink" and r.levelno >= level
    ]


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="gatewayd.uplink")
    return caplog


def test_refused_subscription_is_a_warning_naming_the_topic_and_code(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    # gw may publish its events and read its commands, but not subscribe to its config topic.
    acls = [
        ("publishClientSend", "/devices/gw-test/events/#"),
        ("subscribePattern", "/devices/gw-test/commands/#"),
    ]
    m = DynsecMosquitto(tmp_path / "broker", acls)

    async def scenario() -> None:
        h = await Harness.open(tmp_path, uplink_cfg(m.port, auth=PASSWORD))
        try:
            await until(lambda: h.metrics.total("uplink_subscribe_refused"), 10, "a refused SUBACK")
            ids = await h.append(20)
            await h.drained(10)  # telemetry still flows
            assert h.metrics.total("acked_records") == len(ids)
        finally:
            await h.close()

    try:
        asyncio.run(scenario())
    finally:
        m.stop()
    refused = [x for x in _lines(warnings) if x.startswith("uplink_subscribe_refused")]
    assert len(refused) == 1, _lines(warnings)
    assert "topic=/devices/gw-test/config code=0x80" in refused[0], refused[0]
    assert "/commands" not in refused[0]


def test_broker_closing_at_subscribe_names_the_topics_and_is_no_recovery(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    """Like NATS with a '.' in a topic: the session closes before any SUBACK, again and again."""

    async def scenario() -> None:
        broker = await Broker().start()
        broker.close_on_subscribe = lambda pattern: "/config" in pattern
        cfg = uplink_cfg(broker.port, backoff_base_s=0.1, backoff_cap_s=0.2)
        h = await Harness.open(tmp_path, cfg)
        try:
            # Sampled all along, not once at the end: the cause was named only once the buffer
            # had rewound, and a reader in between saw "connection lost" (CI, this session).
            errors: set[str | None] = set()

            async def sample() -> None:
                while broker.connections < 4:
                    errors.add(h.uplink.last_error)
                    await asyncio.sleep(0.001)

            await asyncio.wait_for(sample(), 15)
            assert errors - {None} == {"closed after CONNACK, before SUBACK"}, errors
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())
    lines = _lines(warnings, logging.INFO)
    closed = [x for x in lines if "before answering SUBSCRIBE" in x]
    assert len(closed) == 1, lines  # once at WARNING; the repeats are DEBUG until a summary
    assert "/devices/gw-test/config, /devices/gw-test/commands/#" in closed[0]
    assert "[uplink.topics]" in closed[0] and "ACL" in closed[0]
    assert not [x for x in lines if x.startswith(("uplink_connected", "uplink_recovered"))][1:]


def test_wrong_key_names_the_settings_to_check_and_stays_visible(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        registry = Registry("p1", "r1", "reg1")
        registry.add("gw-test", generate_key(tmp_path / "registered.key", "ES256"))
        generate_key(tmp_path / "device.key", "ES256")  # not the registered one
        broker = await Broker(registry).start()
        cfg = uplink_cfg(broker.port, auth=jwt_auth(key_id="k1"), backoff_base_s=0.1)
        h = await Harness.open(tmp_path, cfg)
        h.uplink.outage.summary_s = 1.0
        try:
            await until(
                lambda: any("uplink_still_down" in x for x in _lines(warnings)), 15, "a summary"
            )
            assert h.uplink.last_error == "refused: Not authorized"
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())
    lines = _lines(warnings)
    first = [x for x in lines if x.startswith("uplink_connect_failed")]
    assert len(first) == 1, lines  # not twice as attempt=1
    for setting in ("private_key", "key_id ('k1')", "audience ('p1')", "clock"):
        assert setting in first[0], (setting, first[0])
    summary = next(x for x in lines if x.startswith("uplink_still_down"))
    assert "attempts=" in summary and "Not authorized" in summary and "private_key" in summary


def test_mqtt5_against_a_311_only_broker_names_the_protocol_setting(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        broker = await Broker().start()  # speaks MQTT 3.1.1 only
        h = await Harness.open(tmp_path, uplink_cfg(broker.port, protocol="5"))
        try:
            await until(lambda: h.metrics.total("uplink_connect_failures"), 10, "a failure")
        finally:
            await h.close()
            await broker.stop()

    asyncio.run(scenario())
    first = next(x for x in _lines(warnings) if x.startswith("uplink_connect_failed"))
    assert "Unsupported protocol version" in first
    assert '[uplink] protocol = \\"3.1.1\\"' in first, first


def test_missing_ca_file_names_the_setting_and_the_path(
    mosquitto: Mosquitto, tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"

    async def scenario() -> None:
        cfg = uplink_cfg(mosquitto.port, tls=TlsConfig(ca_file=str(missing)))
        h = await Harness.open(tmp_path, cfg)
        try:
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert h.uplink.last_error == (
                f"[uplink.tls] ca_file {missing}: cannot read it: No such file or directory"
            )
        finally:
            await h.close()

    asyncio.run(scenario())
    assert any(f"ca_file {missing}" in x for x in _lines(warnings))


def test_unusable_client_key_names_the_settings_and_the_files(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    cert = tmp_path / "device.crt"
    cert.write_text("not a certificate\n")

    async def scenario() -> None:
        tls = TlsConfig(verify=False, cert_file=str(cert), key_file=str(cert))
        h = await Harness.open(tmp_path, uplink_cfg(mosquitto.port, tls=tls))
        try:
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert h.uplink.last_error is not None
            assert h.uplink.last_error.startswith(
                f"[uplink.tls] cert_file {cert} / key_file {cert}: not a PEM certificate"
            ), h.uplink.last_error
        finally:
            await h.close()

    asyncio.run(scenario())


def test_tls_to_a_plain_port_is_a_clear_error(
    mosquitto: Mosquitto, tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        h = await Harness.open(tmp_path, uplink_cfg(mosquitto.port, tls=TlsConfig()))
        try:
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert h.uplink.last_error is not None
            assert h.uplink.last_error.startswith("TLS handshake failed"), h.uplink.last_error
            assert f"127.0.0.1:{mosquitto.port} did not answer TLS" in h.uplink.last_error
        finally:
            await h.close()

    asyncio.run(scenario())
    first = next(x for x in _lines(warnings) if x.startswith("uplink_connect_failed"))
    assert "plain MQTT port" in first and "[uplink.tls] enabled = false" in first


def test_outage_logs_its_start_in_words_a_summary_and_its_recovery(
    mosquitto: Mosquitto, tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        cfg = uplink_cfg(mosquitto.port, backoff_base_s=0.1, backoff_cap_s=0.3)
        h = await Harness.open(tmp_path, cfg)
        h.uplink.outage.summary_s = 1.0
        try:
            await until(lambda: h.uplink.connected, 10, "connected")
            await h.append(10)
            await h.drained(10)
            mosquitto.kill()
            await until(
                lambda: any("uplink_still_down" in x for x in _lines(warnings)), 15, "a summary"
            )
            mosquitto.start()
            await until(
                lambda: any("uplink_recovered" in x for x in _lines(warnings, logging.INFO)),
                15,
                "the recovery",
            )
            await h.append(10)
            await h.drained(10)
        finally:
            await h.close()

    asyncio.run(scenario())
    lines = _lines(warnings, logging.INFO)
    down = [x for x in lines if x.startswith("uplink_disconnected") and "stopped" not in x]
    assert down == [
        'uplink_disconnected reason="connection lost: closed by the broker or the '
        'network" attempt=1'
    ], lines
    refused = [x for x in lines if x.startswith("uplink_connect_failed")]
    assert (
        refused
        and 'reason="connection refused"' in refused[0]
        and "[uplink] host/port" in refused[0]
    )
    summary = next(x for x in lines if x.startswith("uplink_still_down"))
    assert "attempts=" in summary
    recovered = next(x for x in lines if x.startswith("uplink_recovered"))
    assert f"host=127.0.0.1 port={mosquitto.port} client_id=" in recovered, recovered
    after_s = float(recovered.split("after_s=")[1].split()[0])
    attempts = int(recovered.split("attempts=")[1].split()[0])
    assert after_s > 0 and attempts >= 3, recovered
    # Each failed attempt in between was DEBUG: few lines at INFO and above.
    assert len(lines) < 12, lines


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    n = NatsServer(tmp_path / "nats").start()
    yield n
    n.stop()


def test_nats_delivers_and_a_dot_in_the_device_id_is_named(
    nats: NatsServer, tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    """The case seen on NATS: '.' in a topic closes the connection at SUBSCRIBE, every time."""

    async def scenario() -> None:
        good = await Harness.open(tmp_path, uplink_cfg(nats.port))
        try:
            ids = await good.append(100)
            await good.drained(15)
            assert good.metrics.total("acked_records") == len(ids)
            assert good.uplink.subscribed
        finally:
            await good.close()
        dotted = uplink_cfg(nats.port, device="ev.1", backoff_base_s=0.1, backoff_cap_s=0.3)
        (tmp_path / "dotted").mkdir()
        bad = await Harness.open(tmp_path / "dotted", dotted)
        try:
            await bad.append(10)
            await until(lambda: bad.metrics.total("uplink_connects") >= 3, 15, "three sessions")
        finally:
            await bad.close()

    asyncio.run(scenario())
    assert "not supported" in nats.log()  # the broker's own words, in its log only
    lines = _lines(warnings)
    refused = [x for x in lines if x.startswith("uplink_subscribe_refused")]
    assert [x.split()[1] for x in refused] == [
        "topic=/devices/ev.1/config",
        "topic=/devices/ev.1/commands/#",
    ], lines  # once each, not at every session
    closed = [x for x in lines if x.startswith("uplink_disconnected")]
    assert len(closed) == 1, lines  # the repeats are DEBUG until a summary
    assert "refused SUBSCRIBE to /devices/ev.1/config (0x80)" in closed[0], closed[0]
    assert "NATS allows no '.'" in closed[0] and "[uplink] device" in closed[0]
    assert not [x for x in _lines(warnings, logging.INFO) if "uplink_recovered" in x]


def test_mqtt5_against_nats_names_the_protocol_setting(
    nats: NatsServer, tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        h = await Harness.open(tmp_path, uplink_cfg(nats.port, protocol="5"))
        try:
            await until(lambda: h.metrics.total("uplink_connect_failures"), 10, "a failure")
        finally:
            await h.close()

    asyncio.run(scenario())
    first = next(x for x in _lines(warnings) if x.startswith("uplink_connect_failed"))
    assert '[uplink] protocol = \\"3.1.1\\"' in first, first
