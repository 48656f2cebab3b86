"""Uplink bridge: one MQTT connection to the cloud, QoS 1 batches, ack-to-buffer on PUBACK."""

from .backoff import full_jitter
from .bridge import Uplink, UplinkError
from .device_jwt import load_private_key, mint_jwt

__all__ = ["Uplink", "UplinkError", "full_jitter", "load_private_key", "mint_jwt"]
