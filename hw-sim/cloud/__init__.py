"""Cloud stand-in: an embedded MQTT 3.1.1 broker with a device registry that verifies JWTs."""

from .broker import Broker
from .recorder import Recorder
from .registry import Device, Registry

__all__ = ["Broker", "Device", "Recorder", "Registry"]
