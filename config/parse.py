"""The document-level load: TOML bytes or a pushed document into one frozen GatewayConfig.

Invariants:
- local files and remote pushes go through the same `load_document`;
- each table is read by its own reader (config/tables.py, uplink.py, devices.py, rules.py) on
  a Section (config/section.py) that names the path of every value, so an error always says
  the place; unknown keys are errors too: a typo must not silently fall back to a default;
- what needs the whole document (unique device ids, point names the rules may use, checks
  across the devices of one driver) is checked here, after the tables.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import profiles
from .devices import cached_lookup, check_across, read_device, unique
from .errors import ConfigError
from .model import GatewayConfig
from .options import Lookup, entry_point_options
from .rules import parse_rules
from .section import Section, kind_of
from .tables import (
    read_buffer,
    read_gateway,
    read_logging,
    read_metrics,
    read_remote_config,
    read_update,
    read_version,
)
from .uplink import read_uplink


def example_path() -> Path:
    """The commented example configuration shipped with the package (also used by the demo)."""
    return Path(__file__).parent / "examples" / "gateway.toml"


def load_file(path: str | Path, drivers: Lookup | None = None) -> GatewayConfig:
    return load_document(read_document(path), drivers)


def read_document(path: str | Path) -> dict[str, Any]:
    """The TOML file as a document, not yet validated; every failure is a ConfigError."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            str(p), f"cannot read: {exc.strerror}", "check the path and its permissions"
        ) from exc
    return parse_bytes(raw, source=str(p))


def parse_bytes(raw: bytes, source: str = "<config>") -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            source,
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}",
            "save the file as UTF-8",
        ) from None
    return parse_text(text, source)


def parse_text(text: str, source: str = "<config>") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            source, f"not valid TOML: {exc}", "fix the syntax at the line shown"
        ) from exc
    except RecursionError:
        raise ConfigError(
            source,
            "nested too deeply for a configuration (arrays or inline tables)",
            "the schema nests 4 levels; flatten the value",
        ) from None


def load(text: str, source: str = "<config>", drivers: Lookup | None = None) -> GatewayConfig:
    """Parse and validate TOML text."""
    return load_document(parse_text(text, source), drivers)


def load_document(doc: Any, drivers: Lookup | None = None) -> GatewayConfig:
    """Validate an already-parsed document (a local file or a remote push).

    `drivers` finds the options a device's driver declares; by default the `options` of its
    `gatewayd.drivers` entry point (config/options.py), each looked up once per document.
    """
    lookup = cached_lookup(drivers or entry_point_options)
    if not isinstance(doc, Mapping):
        raise ConfigError(
            "<document>", f"expected a table, got {kind_of(doc)}", "send a JSON object"
        )
    root = Section(doc, "")
    version = read_version(root)
    cfg = replace(
        read_gateway(root.table("gateway")),
        version=version,
        buffer=read_buffer(root.table("buffer")),
        uplink=read_uplink(root.table("uplink")),
        devices=tuple(read_device(s, lookup) for s in root.tables("devices")),
        remote_config=read_remote_config(root.table("remote_config")),
        metrics=read_metrics(root.table("metrics")),
        update=read_update(root.table("update")),
        logging=read_logging(root.table("logging")),
    )
    known = (f"{d.id}/{p.id}" for d in cfg.devices for p in d.points)
    cfg = replace(cfg, rules=parse_rules(root.tables("rules"), known))
    profiles.check_routes(cfg.uplink, cfg.rules)
    root.done()
    unique((d.id for d in cfg.devices), "devices", "id")
    check_across(cfg.devices, lookup)
    return cfg


__all__ = [
    "example_path",
    "load",
    "load_document",
    "load_file",
    "parse_bytes",
    "parse_text",
    "read_document",
]
