"""Driver lookup through entry points: a third-party driver installs without touching the core."""

from __future__ import annotations

from importlib.metadata import entry_points

from gatewayd.config import ConfigError
from gatewayd.config.options import GROUP, OptionSet

from .base import Driver


def available_drivers() -> list[str]:
    return sorted(entry_points(group=GROUP).names)


def load_driver(kind: str, place: str) -> type[Driver]:
    """The driver class for `kind`; only the drivers a config names are imported."""
    eps = entry_points(group=GROUP)
    if kind not in eps.names:
        raise ConfigError(
            place,
            f"unknown driver {kind!r}",
            f"use one of {available_drivers()} or install its package",
        )
    cls = eps[kind].load()
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
