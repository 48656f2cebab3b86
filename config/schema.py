"""The JSON Schema of a whole configuration, for editors and for `gatewayd schema`.

Invariants:
- Written from the same declarations parsing reads: the frozen dataclasses of `model` (keys,
  types, defaults, Literal choices) and each driver's OptionSet (keys, ranges, docs); nothing
  here repeats a default or a choice list.
- It describes what a file may contain; parsing stays the judge (cross-field rules such as one
  setting per bus, profile limits and the rules' expressions are not in the schema). Every
  document parsing accepts is valid against it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from .devices import INTERVAL_MS, TIMEOUT_S
from .model import DeviceConfig, GatewayConfig, PointConfig
from .options import NO_OPTIONS, Option, OptionSet, options_of
from .section import ID, INT_LIMIT

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_DEVICE = DeviceConfig(id="", driver="")
_POINT = PointConfig(id="")  # a point of a driver without a point schema has only a unit
# Keys every device and point has, whatever its driver (config/devices.py reads them).
_DEVICE_COMMON: dict[str, Any] = {
    "id": {"type": "string", "pattern": f"^{ID.pattern}$"},
    "driver": {"type": "string"},
    "interval_ms": {
        "type": "integer",
        "minimum": INTERVAL_MS[0],
        "maximum": INTERVAL_MS[1],
        "default": _DEVICE.interval_ms,
    },
    "timeout_s": {
        "type": "number",
        "minimum": TIMEOUT_S[0],
        "maximum": TIMEOUT_S[1],
        "default": _DEVICE.timeout_s,
    },
}
_POINT_COMMON: dict[str, Any] = {
    "id": _DEVICE_COMMON["id"],
    "interval_ms": {"type": "integer", "minimum": INTERVAL_MS[0], "maximum": INTERVAL_MS[1]},
}
# GatewayConfig fields that are tables (or the version) of their own, not keys of [gateway].
_ROOT_TABLES = ("buffer", "uplink", "remote_config", "metrics", "update", "logging")


def _type(tp: Any) -> dict[str, Any]:
    """The schema of one Python field type (as used in model and options dataclasses)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        alts = [a for a in get_args(tp) if a is not type(None)]
        return _type(alts[0]) if len(alts) == 1 else {"anyOf": [_type(a) for a in alts]}
    if get_origin(tp) is Literal:
        return {"enum": list(get_args(tp))}
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if args and get_origin(args[0]) is tuple:  # key/value pairs: a table in the file
            return {"type": "object"}
        return {"type": "array", "items": _type(args[0]) if args else {}}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
    if tp in simple:
        return {"type": simple[tp]}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp)
    return {}


def _dataclass(cls: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        s = _type(hints[f.name])
        if f.default is not dataclasses.MISSING and _plain(f.default):
            s["default"] = f.default
        props[f.name] = s
    return {"type": "object", "properties": props, "additionalProperties": False}


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


def _option(o: Option) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {
        "text": {"type": "string"},
        "integer": {"type": "integer"},
        "number": {"type": "number"},
        "flag": {"type": "boolean"},
        "choice": {"enum": list(o.choices)},
        "strings": {"type": "array", "items": {"type": "string"}},
        "integers": {"type": "array", "items": {"type": "integer"}},
    }
    s = kinds[o.kind]
    bounds = s["items"] if o.kind == "integers" else s
    if o.lo is not None:
        bounds["minimum"] = o.lo
    if o.hi is not None:
        bounds["maximum"] = o.hi
    if not o.required and not o.optional and _plain(o.default):
        s["default"] = o.default
    elif isinstance(o.default, tuple):
        s["default"] = list(o.default)
    if o.doc:
        s["description"] = o.doc
    return s


def _options(cls: type[Any] | None) -> tuple[dict[str, Any], list[str]]:
    if cls is None:
        return {}, []
    opts = options_of(cls)
    return {o.name: _option(o) for o in opts}, [o.name for o in opts if o.required]


def device_schema(name: str, declared: OptionSet) -> dict[str, Any]:
    """One driver's device table, its own keys and its points' keys included."""
    dev, dev_required = _options(declared.device)
    if declared.point is None:
        pt: dict[str, Any] = {"unit": {"type": "string", "default": _POINT.unit}}
        pt_required: list[str] = []
    else:
        pt, pt_required = _options(declared.point)
    point = {
        "type": "object",
        "properties": {**_POINT_COMMON, **pt},
        "required": ["id", *pt_required],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            **_DEVICE_COMMON,
            "driver": {"const": name},
            **dev,
            "points": {"type": "array", "items": point},
        },
        "required": ["id", "driver", *dev_required],
        "additionalProperties": False,
    }


def config_schema(drivers: Mapping[str, OptionSet]) -> dict[str, Any]:
    """The schema of a whole configuration file with the drivers `drivers` names."""
    root = _dataclass(GatewayConfig, skip=("devices", "rules", "version", *_ROOT_TABLES))
    gateway = {
        **root,
        "properties": {
            ("id" if k == "gateway_id" else k): v for k, v in root["properties"].items()
        },
    }
    hints = typing.get_type_hints(GatewayConfig)
    props: dict[str, Any] = {
        "version": {
            "type": "integer",
            "minimum": 0,
            "maximum": INT_LIMIT,
            "default": GatewayConfig().version,
        },
        "gateway": gateway,
        **{t: _type(hints[t]) for t in _ROOT_TABLES},
        "devices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "driver"],
                "properties": {"driver": {"enum": sorted(drivers)}},
                "allOf": [
                    {
                        "if": {"properties": {"driver": {"const": name}}},
                        "then": device_schema(name, declared or NO_OPTIONS),
                    }
                    for name, declared in sorted(drivers.items())
                ],
            },
        },
        # Rules are checked by config/rules.py (steps, expressions); here: an array of tables.
        "rules": {"type": "array", "items": {"type": "object"}},
    }
    uplink = props["uplink"]
    uplink["properties"]["auth"]["properties"]["claims"] = {"type": "object"}
    return {
        "$schema": DRAFT,
        "title": "gatewayd configuration",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
