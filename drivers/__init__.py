"""Field drivers: poll groups in, Readings out; found through `gatewayd.drivers` entry points."""

from .base import Driver, PollGroup, WriteError, check_write, poll_groups
from .registry import available_drivers, load_driver

__all__ = [
    "Driver",
    "PollGroup",
    "WriteError",
    "available_drivers",
    "check_write",
    "load_driver",
    "poll_groups",
]
