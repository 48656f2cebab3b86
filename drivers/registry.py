"""Driver lookup through entry points: a third-party driver installs without touching the core.

Invariant: the installed drivers and the error for an unknown one come from one place,
gatewayd.config.options (driver_names, find_driver), which config's option lookup uses too.
"""

from __future__ import annotations

from gatewayd.config import ConfigError
from gatewayd.config.options import OptionSet, driver_names, find_driver

from .base import Driver


def available_drivers() -> list[str]:
    return driver_names()


def load_driver(kind: str, place: str) -> type[Driver]:
    """The driver class for `kind`; only the drivers a config names are imported."""
    cls = find_driver(kind, place)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ConfigError(
            place,
            f"entry point {kind!r} is not a gatewayd Driver",
            "fix or uninstall the package that provides it",
        )
    return cls


def declared_options() -> dict[str, OptionSet]:
    """Every installed driver's OptionSet (`gatewayd schema`); imports every driver."""
    return {kind: load_driver(kind, f"driver {kind!r}").options for kind in available_drivers()}
