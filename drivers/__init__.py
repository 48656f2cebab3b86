"""Field drivers: poll groups in, Readings out; found through `gatewayd.drivers` entry points."""

from .base import Driver, PollGroup, WriteError, WriteOutcome, check_write, poll_groups
from .health import DeviceDown
from .registry import available_drivers, load_driver

__all__ = [
    "DeviceDown",
    "Driver",
    "PollGroup",
    "WriteError",
    "WriteOutcome",
    "available_drivers",
    "check_write",
    "load_driver",
    "poll_groups",
]
