"""TLS for the uplink: verified by default; the client certificate (mTLS) is read at every connect.

`server_name` overrides the name verified (and sent as SNI), for a broker reached by IP or alias.
A profile's `tls_minimum` (ClearBlade: "1.2") is set on the context, so an older protocol is
refused whatever the system's OpenSSL configuration allows.

Invariants: verification is off only when [uplink.tls] verify = false says so, and that is logged
at every connect; a file that cannot be used is reported with its setting and its path; the
client certificate's private key is refused when group or others may read it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import stat
from typing import Any

from gatewayd.config import TlsConfig

from .errors import UplinkError

log = logging.getLogger("gatewayd.uplink")


def _check_readable(setting: str, path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UplinkError(
            f"[uplink.tls] {setting} {path}: cannot read it: {exc.strerror}",
            fix=f"fix the path in [uplink.tls] {setting}, or the file's permissions",
        ) from exc


def _check_private(path: str) -> None:
    """A usable private key that group or others can read is refused, like the device key."""
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UplinkError(
            f"[uplink.tls] key_file {path}: readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o})",
            fix=f"run `chmod 600 {path}`",
        )


class _Context(ssl.SSLContext):
    """Verifies, and sends as SNI, `server_name` instead of the host paho connects to."""

    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )


TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def apply_tls(client: Any, tls: TlsConfig, host: str, minimum: str | None = None) -> None:
    """Set up TLS on a paho client; raises UplinkError naming the setting and the file.

    `minimum` is the profile's lowest TLS version ("1.2"), None for the library's default."""
    if not tls.enabled:
        return
    for setting in ("ca_file", "cert_file", "key_file"):
        _check_readable(setting, getattr(tls, setting))
    # What ssl.create_default_context does for a client, in a context that can override the name.
    context = _Context(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = tls.server_name
    if minimum is not None:
        context.minimum_version = TLS_VERSIONS[minimum]
    try:
        if tls.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.load_verify_locations(cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise UplinkError(
            f"[uplink.tls] ca_file {tls.ca_file}: not a PEM CA certificate ({exc.reason})",
            fix="point [uplink.tls] ca_file at the PEM file of the CA that signs the broker",
        ) from exc
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except ssl.SSLError as exc:
            raise UplinkError(
                f"[uplink.tls] cert_file {tls.cert_file} / key_file {tls.key_file}: not a PEM "
                f"certificate and its private key ({exc.reason})",
                fix="point cert_file at the device certificate and key_file at its key",
            ) from exc
        _check_private(tls.key_file or tls.cert_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning("tls_verification_off host=%s (set by [uplink.tls] verify)", host)
    client.tls_set_context(context)
