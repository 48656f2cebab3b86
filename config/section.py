"""The typed reader of one table of a configuration document.

Invariants:
- every read names its path (`devices[2].points[5].address`), so an error always says the place;
- a key is marked read when asked for; `done()` refuses the keys nobody read (a typo must not
  silently fall back to a default);
- every number is bounded, even where a field names no limit of its own (INT_LIMIT, NUM_LIMIT);
- this module imports nothing of config but its error type: the model, the table readers and the
  drivers' option readers all build on it.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from typing import Any, cast

from .errors import ConfigError, closest

# The "no default" marker: a read without a default refuses a missing key.
MISSING: Any = object()
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch: `$` lets "\n" through
# Every number is bounded, even where a field names no limit of its own: a push may carry
# 10**400, which no float(), metric or timer downstream survives. 2**53 - 1 is the largest
# integer that every JSON reader (and a float) holds exactly.
INT_LIMIT = 2**53 - 1
NUM_LIMIT = 1e15
# What a topic or client id template may name (UplinkConfig.template_values).
PLACEHOLDERS = ("project", "region", "registry", "device", "device_id", "hub")


def _show(v: float) -> str:
    """A number short enough for a message (int → str is refused past 4300 digits)."""
    if isinstance(v, int) and abs(v) >= 10**20:
        try:
            return f"an integer of {len(str(abs(v)))} digits"
        except ValueError:
            return "an integer of more than 4300 digits"
    return f"{v:g}" if isinstance(v, float) else str(v)


def kind_of(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


class Section:
    """A table of the document, with the path it sits at and the keys read from it."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self._data = data
        self._path = path
        self._read: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], what: str) -> Any:
        self._read.add(key)
        if key not in self._data:
            if default is MISSING:
                raise ConfigError(self.at(key), "missing", f"set it to {what}")
            return default
        v = self._data[key]
        # bool is an int subclass in Python; never accept it where a number is meant.
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            raise ConfigError(self.at(key), f"expected {what}, got {kind_of(v)}", f"write {what}")
        return v

    def text(self, key: str, default: Any = MISSING) -> str:
        return cast(str, self._get(key, default, (str,), "a string"))

    def peek(self, key: str) -> Any:
        """The raw value (None when absent), for a key whose reading depends on its shape."""
        return self._data.get(key)

    def names(self) -> list[str]:
        return [str(k) for k in self._data]

    def scalar(self, key: str) -> str | int | float | bool:
        what = "a string, number or boolean"
        v = self._get(key, MISSING, (str, int, float, bool), what)
        if isinstance(v, int | float) and not isinstance(v, bool):
            self._finite(key, v, -NUM_LIMIT, NUM_LIMIT)
        return cast("str | int | float | bool", v)

    def template(
        self, key: str, default: Any = MISSING, placeholders: tuple[str, ...] = PLACEHOLDERS
    ) -> str:
        """A text with `{placeholder}`s from `placeholders` only: nothing else survives format()."""
        v = self.text(key, default)
        fix = f"use only {', '.join('{' + n + '}' for n in placeholders)}; no other braces"
        try:
            fields = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ConfigError(self.at(key), f"{v!r}: {exc}", fix) from None
        for _, name, spec, conv in fields:
            if name is None:
                continue
            if name not in placeholders or spec or conv:
                near = closest(name, placeholders)
                hint = f"did you mean {{{near}}}? " if near else ""
                shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ConfigError(
                    self.at(key), f"{v!r}: unknown placeholder {shown + '}'}", hint + fix
                )
        return v

    def opt_text(self, key: str) -> str | None:
        return cast("str | None", self._get(key, None, (str,), "a string"))

    def ident(self, key: str, default: Any = MISSING) -> str:
        v = self.text(key, default)
        if not ID.fullmatch(v):
            raise ConfigError(
                self.at(key),
                f"{v!r} is not a valid id",
                "use letters, digits, '_', '.', '-' (at most 64, no '/')",
            )
        return v

    def strings(self, key: str, default: Any = MISSING) -> tuple[str, ...]:
        v = self._get(key, default, (list, tuple), "an array of strings")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.at(key)}[{i}]", f"expected a string, got {kind_of(item)}", "quote it"
                )
        return tuple(v)

    def integers(
        self, key: str, default: Any = MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> tuple[int, ...]:
        """An array of integers, each within lo..hi (an error names its index)."""
        v = self._get(key, default, (list, tuple), "an array of integers")
        for i, item in enumerate(v):
            at = f"{key}[{i}]"
            if not isinstance(item, int) or isinstance(item, bool):
                raise ConfigError(
                    self.at(at), f"expected an integer, got {kind_of(item)}", "write an integer"
                )
            self._bounded(at, item, lo, hi)
            self._range(at, item, lo, hi, None)
        return tuple(v)

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = MISSING) -> Any:
        v = self.text(key, default)
        if v not in allowed:
            near = closest(v, allowed)
            hint = f"did you mean {near!r}? " if near else ""
            raise ConfigError(
                self.at(key),
                f"{v!r} is not allowed",
                f"{hint}use one of {', '.join(map(repr, allowed))}",
            )
        return v

    def flag(self, key: str, default: Any = MISSING) -> bool:
        return cast(bool, self._get(key, default, (bool,), "true or false"))

    def integer(
        self,
        key: str,
        default: Any = MISSING,
        *,
        lo: int | None = None,
        hi: int | None = None,
        fix: str | None = None,
    ) -> int:
        v = cast(int, self._get(key, default, (int,), "an integer"))
        self._bounded(key, v, lo, hi)
        self._range(key, v, lo, hi, fix)
        return v

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        v = cast("int | None", self._get(key, None, (int,), "an integer"))
        if v is not None:
            self._bounded(key, v, lo, hi)
            self._range(key, v, lo, hi, None)
        return v

    def number(
        self, key: str, default: Any = MISSING, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        v = self._get(key, default, (int, float), "a number")
        self._finite(key, v, lo, hi)
        self._range(key, v, lo, hi, None)
        return float(v)

    def opt_number(
        self, key: str, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        v = self._get(key, None, (int, float), "a number")
        if v is None:
            return None
        self._finite(key, v, lo, hi)
        self._range(key, v, lo, hi, None)
        return float(v)

    def _bounded(self, key: str, v: int, lo: int | None, hi: int | None) -> None:
        if abs(v) > INT_LIMIT:  # said before the range: str() of 10**5000 itself raises
            lo = -INT_LIMIT if lo is None else lo
            hi = INT_LIMIT if hi is None else hi
            raise ConfigError(
                self.at(key), f"{_show(v)} is out of range", f"use an integer from {lo} to {hi}"
            )

    def _finite(self, key: str, v: float, lo: float | None, hi: float | None) -> None:
        """NaN passes every comparison and ±Inf (or 10**400) breaks float arithmetic: refuse
        them before any range check, naming the range the field allows."""
        if isinstance(v, float) and math.isfinite(v) and abs(v) <= NUM_LIMIT:
            return
        if isinstance(v, int) and abs(v) <= NUM_LIMIT:
            return
        if isinstance(v, float) and math.isnan(v):
            problem = "NaN is not a number"
        elif isinstance(v, float) and math.isinf(v):
            problem = f"{'-' if v < 0 else ''}Infinity is not a finite number"
        else:
            problem = f"{_show(v)} is out of range"
        if lo is not None and hi is not None:
            fix = f"use a number from {lo:g} to {hi:g}"
        elif lo is not None:
            fix = f"use a finite number of at least {lo:g}"
        elif hi is not None:
            fix = f"use a finite number of at most {hi:g}"
        else:
            fix = "use a finite number"
        raise ConfigError(self.at(key), problem, fix)

    def _range(
        self, key: str, v: float, lo: float | None, hi: float | None, fix: str | None
    ) -> None:
        if lo is not None and v < lo:
            raise ConfigError(self.at(key), f"{v} is below {lo}", fix or f"use at least {lo}")
        if hi is not None and v > hi:
            raise ConfigError(self.at(key), f"{v} is above {hi}", fix or f"use at most {hi}")

    def table(self, key: str) -> Section:
        v = self._get(key, {}, (dict,), "a table")
        return Section(v, self.at(key))

    def tables(self, key: str) -> list[Section]:
        v = self._get(key, [], (list,), "an array of tables")
        out = []
        for i, item in enumerate(v):
            place = f"{self.at(key)}[{i}]"
            if not isinstance(item, Mapping):
                raise ConfigError(
                    place, f"expected a table, got {kind_of(item)}", "write [[" + key + "]]"
                )
            out.append(Section(item, place))
        return out

    def done(self) -> None:
        """Refuse keys nobody read: they are typos or settings of another version."""
        for key in self._data:
            if key not in self._read:
                near = closest(str(key), sorted(self._read))
                hint = (
                    f"did you mean {near!r}?"
                    if near
                    else f"known keys: {', '.join(sorted(self._read))}"
                )
                raise ConfigError(self.at(str(key)), "unknown key", hint)


__all__ = ["ID", "INT_LIMIT", "MISSING", "NUM_LIMIT", "PLACEHOLDERS", "Section", "kind_of"]
