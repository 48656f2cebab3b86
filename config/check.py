"""Every error of a configuration document at once: the pure half of `gatewayd check`.

Invariants:
- the parser stops at its first error, so each top-level table, each device and each rule is
  parsed on its own (with the parser's own functions, so the messages are the same) and the errors
  gathered; what needs the whole document (unique ids, one setting per bus, rule names) comes from
  one full `load_document`, run only when every part parsed;
- the checks here read the document and the parsed values only: no file, no driver registry
  (config imports none of drivers/buffer/gatewayd; gatewayd.check adds those);
- an error here is a ConfigError with place, problem and fix, like the parser's.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .devices import cached_lookup, read_device
from .errors import ConfigError
from .model import GatewayConfig, RemoteConfigConfig, UplinkConfig
from .options import Lookup, entry_point_options
from .parse import load_document
from .rules import parse_rules
from .section import Section
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

T = TypeVar("T")

@dataclass
class Parsed:
    """What parsed, part by part, and every error found."""

    errors: list[ConfigError] = field(default_factory=list)
    cfg: GatewayConfig | None = None  # only when the whole document is valid
    uplink: UplinkConfig | None = None
    remote_config: RemoteConfigConfig | None = None
    state_dir: str | None = None


def parse_all(doc: Any) -> Parsed:
    """Parse `doc` part by part, gathering every error (the parser alone stops at the first)."""
    out = Parsed()
    if not isinstance(doc, Mapping):
        out.errors.append(_error_of(load_document, doc))
        return out

    def part(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            out.errors.append(exc)
            return None

    root = Section(doc, "")
    part(read_version, root)
    gw = part(root.table, "gateway")
    gateway = part(read_gateway, gw) if gw is not None else None
    out.state_dir = gateway.state_dir if gateway is not None else None
    out.uplink = part(_table, root, "uplink", read_uplink)
    out.remote_config = part(_table, root, "remote_config", read_remote_config)
    for name, fn in (
        ("buffer", read_buffer),
        ("metrics", read_metrics),
        ("update", read_update),
        ("logging", read_logging),
    ):
        part(_table, root, name, fn)
    known: list[str] = []
    lookup = cached_lookup(entry_point_options)  # each driver's declared options
    for i, s in enumerate(part(root.tables, "devices") or []):
        dev = part(read_device, s, lookup)
        if dev is not None:
            known += (f"{dev.id}/{p.id}" for p in dev.points)
        else:  # its points still exist for the rules: no second error for one mistake
            known += _raw_points(doc["devices"][i])
    for s in part(root.tables, "rules") or []:
        part(parse_rules, [s], known)
    part(root.done)
    if not out.errors:
        out.cfg = part(load_document, doc)
    return out


def _table(root: Section, name: str, fn: Callable[[Section], T]) -> T:
    return fn(root.table(name))


def _raw_points(dev: Mapping[str, Any]) -> list[str]:
    points = dev.get("points")
    if not isinstance(points, list):
        return []
    return [f"{dev.get('id')}/{p.get('id')}" for p in points if isinstance(p, Mapping)]


def _error_of(fn: Callable[[Any], Any], arg: Any) -> ConfigError:
    try:
        fn(arg)
    except ConfigError as exc:
        return exc
    raise AssertionError("expected a ConfigError")  # pragma: no cover


_COMMON = frozenset({"id", "driver", "interval_ms", "timeout_s", "points"})


def device_problems(doc: Mapping[str, Any]) -> list[ConfigError]:
    """Options foreign to a device's driver (declared by another installed driver) and each
    driver's advice on its raw points (`OptionSet.lint_point`: Modbus finds vendor-style
    addresses), from the raw document (so a device the parser refused for something else is
    still looked at)."""
    out: list[ConfigError] = []
    devices = doc.get("devices")
    if not isinstance(devices, list):
        return out
    lookup = cached_lookup(entry_point_options)
    owners: dict[str, set[str]] | None = None  # every installed driver, loaded only if needed
    for i, dev in enumerate(devices):
        if not isinstance(dev, Mapping):
            continue
        driver = dev.get("driver")
        own = _own_options(driver, lookup)
        foreign = [k for k in dev if k not in _COMMON and k not in own] if own else []
        if foreign and owners is None:
            owners = _option_owners()  # imports every installed driver: only for a stray key
        for key in foreign:
            assert owners is not None
            if key in owners:
                out.append(
                    ConfigError(
                        f"devices[{i}].{key}",
                        f"is not an option of driver = {driver!r} "
                        f"(only of {', '.join(sorted(owners[key]))})",
                        "remove it, or set the driver this device really uses",
                    )
                )
        lint = _point_lint(driver, lookup)
        points = dev.get("points")
        if lint is None or not isinstance(points, list):
            continue
        for j, p in enumerate(points):
            if isinstance(p, Mapping):
                err = lint(p, f"devices[{i}].points[{j}]")
                if err is not None:
                    out.append(err)
    return out


def _own_options(driver: Any, lookup: Lookup) -> set[str]:
    """The device option names `driver` declares; none for a driver not installed or broken
    (reported where the config names it). Imports that driver only, as `run` will anyway."""
    from .options import options_of

    if not isinstance(driver, str):
        return set()
    try:
        device = lookup(driver, "driver").device
    except ConfigError:
        return set()
    return {o.name for o in options_of(device)} if device is not None else set()


def _option_owners() -> dict[str, set[str]]:
    """Device option name -> the installed drivers that declare it."""
    from .options import driver_names, options_of

    owners: dict[str, set[str]] = {}
    for name in driver_names():
        try:
            device = entry_point_options(name, "driver").device
        except ConfigError:
            continue  # a broken plugin is reported where a config names it
        for o in options_of(device) if device is not None else ():
            owners.setdefault(o.name, set()).add(name)
    return owners


def _point_lint(driver: Any, lookup: Lookup) -> Callable[[Mapping[str, Any], str], Any] | None:
    if not isinstance(driver, str):
        return None
    try:
        return lookup(driver, "driver").lint_point
    except ConfigError:
        return None  # an unknown driver is reported by the parser


def template_problems(uplink: UplinkConfig) -> list[ConfigError]:
    """A value a client id, topic, username or claim names must not be empty: the gateway
    would connect as `projects//locations//registries//devices/`."""
    values = uplink.template_values()
    templates = [
        ("uplink.client_id", uplink.client_id),
        *((f"uplink.topics.{k}", getattr(uplink.topics, k)) for k in _TOPICS),
        ("uplink.auth.username", uplink.auth.username),
        *((f"uplink.auth.claims.{k}", v) for k, v in uplink.auth.claims if isinstance(v, str)),
    ]
    out: list[ConfigError] = []
    seen: set[str] = set()
    for where, text in templates:
        for name in _placeholders(text):
            key = "device" if name == "device_id" else name
            if values[name] or key in seen:
                continue
            seen.add(key)
            out.append(
                ConfigError(
                    f"uplink.{key}",
                    f"is empty, but {where} names {{{name}}} "
                    f"(it would read {text.format(**values)!r})",
                    f"set uplink.{key}",
                )
            )
    return out


_TOPICS = ("events", "state", "config", "commands", "command_results")


def _placeholders(text: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name]
    except ValueError:  # the parser refuses such a template already
        return []


def merge(errors: list[ConfigError], extra: list[ConfigError]) -> list[ConfigError]:
    """`errors` then `extra`; an extra error replaces a parser error at the same place (it says
    more: 400001 is above 65535, but it is also holding register 0)."""
    places = {e.place for e in extra}
    return [e for e in errors if e.place not in places] + extra


__all__ = ["Parsed", "device_problems", "merge", "parse_all", "template_problems"]
