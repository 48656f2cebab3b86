"""Uplink: one MQTT connection to the cloud, QoS 1 batches, ack-to-buffer on PUBACK.

Modules, by job: session.py (the connect/publish/reconnect loop), window.py (take -> publish ->
PUBACK -> ack), channels/ (how config, commands and state travel: retained topics, Azure's
twin and direct methods), credentials.py (password, device JWT, SAS token, and when each is
renewed), device_jwt.py
(keys and token minting), connect.py (the paho client from settings), tls.py (verification and
the client certificate), paho_socket.py (paho's socket on the asyncio loop), diagnose.py
(failures in words, with the settings to check), outage.py (how an outage shows in the log),
errors.py, payload.py (encoders). The reconnect backoff is gatewayd.backoff.full_jitter.
"""

from gatewayd.backoff import full_jitter

from .device_jwt import load_private_key, mint_jwt
from .errors import UplinkError
from .payload import Encoder, encode_json, load_encoder
from .session import StateSource, Uplink

__all__ = [
    "Encoder",
    "StateSource",
    "Uplink",
    "UplinkError",
    "encode_json",
    "full_jitter",
    "load_encoder",
    "load_private_key",
    "mint_jwt",
]
