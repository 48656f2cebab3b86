"""Connection failures put into words: what happened, and which [uplink] setting to check.

Invariant: a reason never contains a secret (no password, token or key material), only setting
names, file paths, host and port, and the broker's own reason codes.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from gatewayd.config import UplinkConfig

from .errors import UplinkError

# CONNACK codes that mean "your credentials": 3.1.1 codes 4 and 5 arrive from paho as 134/135.
AUTH_REFUSED = {134, 135}
UNSUPPORTED_PROTOCOL = 132  # 3.1.1 code 1 arrives from paho as 132


def _protocol_fix(cfg: UplinkConfig) -> str:
    if cfg.protocol == "5":
        return 'the broker may speak only MQTT 3.1.1: set [uplink] protocol = "3.1.1"'
    return 'the broker may speak only MQTT 5: set [uplink] protocol = "5"'


def _auth_fix(cfg: UplinkConfig) -> str:
    a = cfg.auth
    if a.kind == "jwt":
        kid = f"{a.key_id!r}" if a.key_id else "none"
        return (
            f"check [uplink.auth] private_key ({a.private_key}) is the key registered for "
            f"device {cfg.device!r}, key_id ({kid}), audience ({a.audience!r}), algorithm "
            f"({a.algorithm}), claims, and that this gateway's clock is right (iat/exp)"
        )
    if a.kind == "password":
        return f"check [uplink.auth] username ({a.username!r}) and password"
    if a.kind == "sas":
        source = f"device_key_file ({a.device_key_file})" if a.device_key_file else "device_key"
        return (
            f"check [uplink.auth] {source} is a key (primary or secondary) of device "
            f"{cfg.device!r} in hub {cfg.hub!r}, [uplink] device and hub, and that this "
            "gateway's clock is right (the token's se)"
        )
    if a.kind == "access_token":
        file = a.access_token_file
        source = f"access_token_file ({file})" if file else "access_token"
        return (
            f"check [uplink.auth] {source} holds the access token of the gateway device "
            "(ThingsBoard: Devices > the device > Manage credentials) and that the device is a "
            "gateway (Is gateway)"
        )
    if a.kind == "x509":
        return (
            f"check that [uplink.tls] cert_file is the certificate registered for device "
            f"{cfg.device!r} (its thumbprint or CA) and [uplink] device and hub"
        )
    return "the broker wants credentials: set [uplink.auth] kind and its settings"


def refused(rc: Any, cfg: UplinkConfig) -> UplinkError:
    """A CONNACK with a failure code."""
    code = getattr(rc, "value", rc)
    if code in AUTH_REFUSED:
        return UplinkError(f"refused: {rc}", auth_refused=True, fix=_auth_fix(cfg))
    if code == UNSUPPORTED_PROTOCOL:
        return UplinkError(f"refused: {rc}", fix=_protocol_fix(cfg))
    if code == 133:
        return UplinkError(f"refused: {rc}", fix="check [uplink] client_id and its template")
    return UplinkError(f"refused: {rc}")


def closed_before_connack(rc: Any, cfg: UplinkConfig) -> UplinkError:
    fix = "the broker dropped the CONNECT; its log says why (client id, credentials, protocol)"
    if cfg.protocol == "5":
        fix = _protocol_fix(cfg) + "; otherwise " + fix
    return UplinkError(f"closed before CONNACK: {rc}", fix=fix)


def _where(cfg: UplinkConfig) -> str:
    return f"{cfg.host}:{cfg.port}"


def connect_failed(exc: BaseException, cfg: UplinkConfig) -> UplinkError:
    """An exception from the TCP connect, the TLS handshake or sending CONNECT."""
    tls = cfg.tls.enabled
    if isinstance(exc, ssl.SSLCertVerificationError):
        return UplinkError(
            f"TLS verification failed: {exc.verify_message}",
            fix=f"check [uplink.tls] ca_file ({cfg.tls.ca_file or 'the system trust store'}) "
            f"signs the broker's certificate, and that it is issued for {cfg.host!r} "
            "(or set [uplink.tls] server_name)",
        )
    if isinstance(exc, ConnectionRefusedError):
        return UplinkError(
            "connection refused",
            fix=f"nothing listens at {_where(cfg)}: the broker is down, or [uplink] host/port "
            "is wrong",
        )
    if isinstance(exc, socket.gaierror):
        return UplinkError(
            f"cannot resolve host: {exc.strerror}",
            fix=f"check [uplink] host ({cfg.host!r}) and DNS",
        )
    plain_port = isinstance(exc, ssl.SSLEOFError | ConnectionResetError) or (
        isinstance(exc, ssl.SSLError)
        and exc.reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"}
    )
    if tls and plain_port:
        return UplinkError(
            f"TLS handshake failed ({type(exc).__name__}): {_where(cfg)} did not answer TLS",
            fix="is it a plain MQTT port? set [uplink] port to the broker's TLS port (often "
            "8883), or [uplink.tls] enabled = false for a plain listener",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return UplinkError(
            f"no answer from {_where(cfg)} within {cfg.connect_timeout_s:g} s",
            fix="check the network path and [uplink] host/port; a firewall may drop packets",
        )
    if isinstance(exc, OSError) and exc.strerror:
        return UplinkError(f"{type(exc).__name__}: {exc.strerror} ({_where(cfg)})")
    return UplinkError(f"{type(exc).__name__}: {exc}")


def connection_lost(rc: Any, from_server: bool) -> str:
    """The reason a session ended, in words (paho says "Unspecified error" for a closed socket)."""
    text = str(rc)
    if from_server:
        return f"connection lost: the broker sent DISCONNECT: {text}"
    if text == "Unspecified error":
        return "connection lost: closed by the broker or the network"
    return f"connection lost: {text}"


def session_fix(reason: str) -> str | None:
    """The settings to check after an established session ended with `reason`."""
    if reason.startswith("publish refused"):
        return (
            "the broker refused a message: check its ACL or token scopes for [uplink.topics] "
            "events, and its message size limit against [uplink] batch_max_bytes"
        )
    if reason == "puback_timeout":
        return (
            "no PUBACK within [uplink] puback_timeout_s: the broker stopped acknowledging (an "
            "expired token, a revoked permission) or is overloaded; the records are sent again"
        )
    if "Keep alive timeout" in reason:
        return "no answer to keepalive pings: the network path drops packets (or [uplink] host)"
    return None
