"""Options a driver declares: frozen dataclasses whose fields carry their range, doc and fix.

Invariants:
- A driver's device options and point schema are plain frozen dataclasses; a field's type says
  how it is read (str, int, float, bool, a Literal of strings, `X | None`, tuple[str, ...],
  tuple[int, ...] whose items lo..hi bound),
  its default is the documented default, and `option(...)` metadata adds range, doc and fix.
  Defaults and choice lists are written once, here, and both parsing and `gatewayd schema` read
  them from the dataclass.
- Core config knows no driver: `load_document` receives a lookup (driver name -> OptionSet); the
  default lookup reads the `options` attribute of the `gatewayd.drivers` entry point of that
  name, so config imports nothing of `drivers` and a driver installed later is found.
- The types live here, in `config`, because `DeviceConfig` holds the parsed options and
  `config` may import nothing of `drivers`; `gatewayd.drivers.options` re-exports them as the
  plugin contract.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from .errors import ConfigError, closest

T = TypeVar("T")
GROUP = "gatewayd.drivers"  # the entry point group: the name a config's `driver` names

# A place under the device table: at("port") -> "devices[2].port".
At = Callable[[str], str]


def option(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    doc: str = "",
    fix: str | None = None,
) -> Any:
    """A dataclass field with the range `lo..hi`, a one-line `doc` (in `gatewayd schema`) and
    the `fix` an out-of-range value names (default: "use at least lo" / "use at most hi")."""
    meta = {"lo": lo, "hi": hi, "doc": doc, "fix": fix}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Option:
    """One key of a table, as read from a dataclass field."""

    name: str
    kind: Literal["text", "integer", "number", "flag", "choice", "strings", "integers"]
    default: Any  # dataclasses.MISSING: required
    optional: bool = False  # `X | None`: absent means None
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    doc: str = ""
    fix: str | None = None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING and not self.optional


_KINDS: dict[Any, Literal["text", "integer", "number", "flag"]] = {
    str: "text",
    int: "integer",
    float: "number",
    bool: "flag",
}


_OPTIONS: dict[type[Any], tuple[Option, ...]] = {}


def options_of(cls: type[Any]) -> tuple[Option, ...]:
    """The options of a dataclass of options, in field order (asked once per point: cached, a
    60,000-point file took 50 s in `get_type_hints` alone)."""
    known = _OPTIONS.get(cls)
    if known is None:
        known = _OPTIONS[cls] = _options_of(cls)
    return known


def _options_of(cls: type[Any]) -> tuple[Option, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        words: tuple[str, ...] = ()  # tuple[int, ...] | Literal["any", ...]: an array or a word
        if get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            optional = len(args) < len(get_args(tp))
            literals = [a for a in args if get_origin(a) is Literal]
            if literals and len(args) == 2:
                words = tuple(get_args(literals[0]))
                args.remove(literals[0])
            tp = args[0]
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        common = {
            "default": default,
            "optional": optional,
            "lo": meta.get("lo"),
            "hi": meta.get("hi"),
            "doc": meta.get("doc", ""),
            "fix": meta.get("fix"),
        }
        if get_origin(tp) is Literal:
            out.append(Option(f.name, "choice", choices=tuple(get_args(tp)), **common))
        elif get_origin(tp) is tuple and get_args(tp)[:1] == (int,):
            out.append(Option(f.name, "integers", choices=words, **common))
        elif get_origin(tp) is tuple:
            out.append(Option(f.name, "strings", **common))
        elif tp in _KINDS:
            out.append(Option(f.name, _KINDS[tp], **common))
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: options cannot be of type {tp!r}")
    return tuple(out)


class Reader(typing.Protocol):
    """What reading options needs of a table (config.section.Section is one)."""

    def at(self, key: str) -> str: ...
    def peek(self, key: str) -> Any: ...
    def text(self, key: str, default: Any = ...) -> str: ...
    def opt_text(self, key: str) -> str | None: ...
    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]: ...
    def integers(
        self, key: str, default: Any = ..., *, lo: int | None = None, hi: int | None = None
    ) -> tuple[int, ...]: ...
    def choice(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> Any: ...
    def flag(self, key: str, default: Any = ...) -> bool: ...
    def integer(
        self,
        key: str,
        default: Any = ...,
        *,
        lo: int | None = None,
        hi: int | None = None,
        fix: str | None = None,
    ) -> int: ...
    def opt_integer(
        self, key: str, *, lo: int | None = None, hi: int | None = None
    ) -> int | None: ...
    def number(
        self, key: str, default: Any = ..., *, lo: float | None = None, hi: float | None = None
    ) -> float: ...
    def opt_number(
        self, key: str, *, lo: float | None = None, hi: float | None = None
    ) -> float | None: ...


def read_options(cls: type[T], s: Reader, missing: Any) -> T:
    """An instance of `cls` from the table `s`; every error names the key, problem and fix.
    `missing` is the reader's marker for "no default" (config.section.MISSING)."""
    values: dict[str, Any] = {}
    for o in options_of(cls):
        d = missing if o.default is dataclasses.MISSING else o.default
        lo = None if o.lo is None else int(o.lo)
        hi = None if o.hi is None else int(o.hi)
        if o.kind == "text":
            values[o.name] = s.opt_text(o.name) if o.optional else s.text(o.name, d)
        elif o.kind == "choice" and o.optional:
            given = s.opt_text(o.name)
            values[o.name] = None if given is None else s.choice(o.name, o.choices)
        elif o.kind == "choice":
            values[o.name] = s.choice(o.name, o.choices, d)
        elif o.kind == "strings":
            values[o.name] = s.strings(o.name, d)
        elif o.kind == "integers" and o.choices and not isinstance(s.peek(o.name), list | None):
            values[o.name] = _word(s, o)  # a word (e.g. "any") instead of an array
        elif o.kind == "integers":
            values[o.name] = s.integers(o.name, d, lo=lo, hi=hi)
        elif o.kind == "flag":
            values[o.name] = s.flag(o.name, d)
        elif o.kind == "integer" and o.optional:
            values[o.name] = s.opt_integer(o.name, lo=lo, hi=hi)
        elif o.kind == "integer":
            values[o.name] = s.integer(o.name, d, lo=lo, hi=hi, fix=o.fix)
        elif o.optional:
            values[o.name] = s.opt_number(o.name, lo=o.lo, hi=o.hi)
        else:
            values[o.name] = s.number(o.name, d, lo=o.lo, hi=o.hi)
    return cls(**values)


@dataclass(frozen=True, slots=True)
class Placed:
    """A parsed device and where it sits, for checks across the devices of one driver."""

    index: int
    device: Any  # config.model.DeviceConfig; Any keeps this module free of the model


@dataclass(frozen=True)
class OptionSet:
    """What a driver declares: its device options, its point schema and their cross-checks.

    - `device`: a frozen dataclass of the device table's own keys (beside id, driver,
      interval_ms, timeout_s and points, which every device has).
    - `point`: a frozen dataclass of a point's keys beside `id` and `interval_ms`, and
      `make_point(values, base, at)` building the PointConfig from it (`base` carries id and
      interval_ms; raise ConfigError(at(key), ...) for a combination the schema refuses).
      Without `point`, a point has only id, interval_ms and unit.
    - `check(device, at)`: cross-field rules of one device (its options and points).
    - `check_all(devices)`: rules across the devices of this driver (a shared bus), raising
      ConfigError naming `devices[i].key`.
    - `lint_point(raw, place)`: advice on one raw point table, read by `gatewayd check` before
      parsing (so a point the parser refused is still looked at): a ConfigError naming
      `place.key`, or None. It replaces the parser's error at the same place, saying more.
    """

    device: type[Any] | None = None
    point: type[Any] | None = None
    make_point: Callable[[Any, Any, At], Any] | None = None
    check: Callable[[Any, At], None] | None = None
    check_all: Callable[[Sequence[Placed]], None] | None = None
    lint_point: Callable[[Mapping[str, Any], str], Any] | None = None


NO_OPTIONS = OptionSet()

# driver name, place of the `driver` key -> its OptionSet (ConfigError if unknown)
Lookup = Callable[[str, str], OptionSet]


def driver_names() -> list[str]:
    """The installed drivers: the names of the `gatewayd.drivers` entry points, sorted."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=GROUP).names)


def find_driver(kind: str, place: str) -> Any:
    """What the `gatewayd.drivers` entry point named `kind` loads (a driver class).

    The one place an unknown driver is reported, with a did-you-mean: config's lookup of a
    driver's options and the daemon's driver registry (gatewayd.drivers.load_driver) both ask
    here, so `check`, a push and `run` say the same."""
    from importlib.metadata import entry_points

    eps = entry_points(group=GROUP)
    if kind not in eps.names:
        names = sorted(eps.names)
        near = closest(kind, names)
        raise ConfigError(
            place,
            f"unknown driver {kind!r}",
            f"did you mean {near!r}? (or install the package that provides {kind!r})"
            if near
            else f"use one of {', '.join(map(repr, names))} or install its package",
        )
    return eps[kind].load()


def entry_point_options(kind: str, place: str) -> OptionSet:
    """The default Lookup: the `options` of the `gatewayd.drivers` entry point named `kind`."""
    declared = getattr(find_driver(kind, place), "options", NO_OPTIONS)
    if not isinstance(declared, OptionSet):
        raise ConfigError(
            place,
            f"driver {kind!r} declares `options` that are not an OptionSet",
            "fix or uninstall the package that provides it",
        )
    return declared


def table_lookup(table: Mapping[str, OptionSet]) -> Lookup:
    """A Lookup from a fixed table (tests, and callers that know their drivers)."""

    def lookup(kind: str, place: str) -> OptionSet:
        if kind not in table:
            raise ConfigError(place, f"unknown driver {kind!r}", f"use one of {sorted(table)}")
        return table[kind]

    return lookup


def device_options(device: Any, cls: type[T]) -> T:
    """A driver's typed view of `device.options` (its OptionSet's `device` class)."""
    opts = device.options
    if not isinstance(opts, cls):
        raise TypeError(
            f"device {device.id!r}: options are {type(opts).__name__}, expected {cls.__name__} "
            "(build DeviceConfig with the driver's options class)"
        )
    return opts


def _word(s: Reader, o: Option) -> str:
    """The word an array option may be instead (`tuple[int, ...] | Literal[...]`)."""
    words = " or ".join(f'"{w}"' for w in o.choices)
    fix = f"write {words} or an array of integers {o.lo:g}..{o.hi:g}"
    value = s.peek(o.name)
    if not isinstance(value, str):
        raise ConfigError(s.at(o.name), f"expected {words} or an array of integers", fix)
    if s.text(o.name) not in o.choices:  # text(): also marks the key as read
        raise ConfigError(s.at(o.name), f"{value!r} is not allowed", fix)
    return value
