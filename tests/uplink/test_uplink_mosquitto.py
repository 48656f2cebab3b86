"""The uplink against a real mosquitto: TLS verified by default, mTLS, user/password, MQTT 5."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from uplink_harness import Harness, SecureMosquitto, until, uplink_cfg

from gatewayd.config import AuthConfig, TlsConfig
from gatewayd_sim.cloud.certs import CertificateAuthority


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureMosquitto]:
    m = SecureMosquitto(tmp_path / "broker")
    yield m
    m.stop()


PASSWORD = AuthConfig(kind="password", username="gw", password="s3cret")


def _drain(tmp_path: Path, port: int, tls: TlsConfig, **changes: object) -> Harness:
    async def scenario() -> Harness:
        cfg = uplink_cfg(port, tls=tls, **changes)
        h = await Harness.open(tmp_path, cfg)
        try:
            await h.append(200)
            await h.drained(15)
        finally:
            await h.close()
        return h

    return asyncio.run(scenario())


def test_tls_with_test_ca_and_password_delivers(secure: SecureMosquitto, tmp_path: Path) -> None:
    tls = TlsConfig(ca_file=str(secure.ca.ca_file))
    h = _drain(tmp_path, secure.port, tls, auth=PASSWORD)
    assert h.metrics.total("acked_records") == 200


def test_mqtt5_with_tls_and_password_delivers(secure: SecureMosquitto, tmp_path: Path) -> None:
    tls = TlsConfig(ca_file=str(secure.ca.ca_file))
    h = _drain(tmp_path, secure.port, tls, auth=PASSWORD, protocol="5")
    assert h.metrics.total("acked_records") == 200


def test_server_from_another_ca_is_refused_and_reported(
    secure: SecureMosquitto, tmp_path: Path
) -> None:
    other = CertificateAuthority(tmp_path / "other", cn="another CA")

    async def scenario() -> None:
        cfg = uplink_cfg(secure.port, tls=TlsConfig(ca_file=str(other.ca_file)), auth=PASSWORD)
        h = await Harness.open(tmp_path, cfg)
        try:
            await h.append(5)
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert h.uplink.last_error.startswith("TLS verification failed"), h.uplink.last_error
            assert await h.depth() == 5
        finally:
            await h.close()

    asyncio.run(scenario())


def test_verification_off_is_explicit_and_logged(
    secure: SecureMosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gatewayd.uplink")
    h = _drain(tmp_path, secure.port, TlsConfig(verify=False), auth=PASSWORD)
    assert h.metrics.total("acked_records") == 200
    assert any("tls_verification_off" in r.getMessage() for r in caplog.records)


def test_wrong_password_is_refused_and_reported(secure: SecureMosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        wrong = AuthConfig(kind="password", username="gw", password="nope")
        cfg = uplink_cfg(secure.port, tls=TlsConfig(ca_file=str(secure.ca.ca_file)), auth=wrong)
        h = await Harness.open(tmp_path, cfg)
        try:
            await until(lambda: h.uplink.last_error, 10, "a reported failure")
            assert "refused" in (h.uplink.last_error or ""), h.uplink.last_error
            assert h.metrics.total("uplink_auth_remints") == 0  # only tokens are re-minted
        finally:
            await h.close()

    asyncio.run(scenario())


def test_mtls_client_certificate_delivers(tmp_path: Path) -> None:
    m = SecureMosquitto(tmp_path / "broker", mtls=True)
    try:
        cert, key = m.ca.issue("gw-test", server=False)
        tls = TlsConfig(ca_file=str(m.ca.ca_file), cert_file=str(cert), key_file=str(key))
        h = _drain(tmp_path, m.port, tls, auth=AuthConfig(kind="none"))
        assert h.metrics.total("acked_records") == 200
    finally:
        m.stop()


def test_mqtt5_refused_puback_does_not_ack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto answers a publish the ACL denies with PUBACK reason 0x87 to MQTT 5 clients."""
    caplog.set_level(logging.WARNING, logger="gatewayd.uplink")
    acl = "user gw\ntopic read /devices/gw-test/#\n"
    m = SecureMosquitto(tmp_path / "broker", acl=acl)

    async def scenario() -> None:
        tls = TlsConfig(ca_file=str(m.ca.ca_file))
        h = await Harness.open(tmp_path, uplink_cfg(m.port, tls=tls, auth=PASSWORD, protocol="5"))
        try:
            await h.append(50)
            await until(lambda: h.metrics.total("uplink_publish_refused"), 10, "a refused PUBACK")
            assert h.metrics.total("acked_records") == 0
            assert await h.depth() == 50
            refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert "uplink_publish_refused reason=Not authorized records=50" in refusals
            await until(
                lambda: any("uplink_disconnected" in r.getMessage() for r in caplog.records),
                10,
                "the session ended",
            )
            ended = next(
                r.getMessage() for r in caplog.records if "uplink_disconnected" in r.getMessage()
            )
            assert "publish refused: Not authorized" in ended and "ACL" in ended, ended
        finally:
            await h.close()

    try:
        asyncio.run(scenario())
    finally:
        m.stop()
