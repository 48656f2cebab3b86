"""Uplink bridge: one MQTT connection to the cloud, QoS 1 batches, ack-to-buffer on PUBACK."""

from .backoff import full_jitter
from .bridge import StateSource, Uplink, UplinkError
from .device_jwt import load_private_key, mint_jwt
from .payload import Encoder, encode_json, load_encoder

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
