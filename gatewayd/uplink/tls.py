"""TLS for the uplink: verified by default; the client certificate (mTLS) is read at every connect.

Invariant: verification is off only when [uplink.tls] verify = false says so, and that is logged
at every connect.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from gatewayd.config import TlsConfig

log = logging.getLogger("gatewayd.uplink")


def apply_tls(client: Any, tls: TlsConfig, host: str) -> None:
    """Set up TLS on a paho client (raises OSError/ssl.SSLError for unusable files)."""
    if not tls.enabled:
        return
    client.tls_set(
        ca_certs=tls.ca_file,
        certfile=tls.cert_file,
        keyfile=tls.key_file,
        cert_reqs=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
    )
    if not tls.verify:
        client.tls_insecure_set(True)
        log.warning("tls_verification_off host=%s (set by [uplink.tls] verify)", host)
