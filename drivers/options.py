"""The plugin contract's option types: what a driver declares so config can read its tables.

A driver class sets `options = OptionSet(device=..., point=..., make_point=...)` (see
drivers/README.md). The types live in gatewayd.config.options because `config` imports nothing
of `drivers`; this module is where a driver package imports them from.
"""

from dataclasses import fields
from typing import Any

from gatewayd.config import DeviceConfig
from gatewayd.config.options import (
    NO_OPTIONS,
    At,
    Option,
    OptionSet,
    Placed,
    device_options,
    option,
    options_of,
)

_DEVICE_KEYS = {f.name for f in fields(DeviceConfig)} - {"options"}


def device_config(options: type[Any] | None = None, **kw: Any) -> DeviceConfig:
    """A DeviceConfig built in code (tests, benches): the common keys go to the device, the rest
    to the driver's `options` class (by default the one the named `driver` declares), as a
    config table would be split."""
    if options is None:
        from .registry import load_driver

        options = load_driver(kw["driver"], "driver").options.device
    own = {k: kw.pop(k) for k in list(kw) if k in _DEVICE_KEYS}
    return DeviceConfig(**own, options=None if options is None else options(**kw))


__all__ = [
    "NO_OPTIONS",
    "At",
    "Option",
    "OptionSet",
    "Placed",
    "device_config",
    "device_options",
    "option",
    "options_of",
]
