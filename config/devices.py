"""The reader of [[devices]] and their [[devices.points]]: the keys every device shares here,
the rest read through the options its driver declares (config/options.py).

Invariants:
- core config knows no driver's keys: a `Lookup` gives the driver's OptionSet, looked up once
  per document (`cached_lookup`);
- ids are unique within their list (`unique`), and a driver's own checks run per device and
  across its devices (one setting per shared bus).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from .errors import ConfigError
from .model import DeviceConfig, PointConfig
from .options import Lookup, OptionSet, Placed, read_options
from .section import MISSING, Section

# Ranges of the keys every device and point has (the schema publishes the same, config/schema.py).
INTERVAL_MS = (10, 24 * 3600 * 1000)
TIMEOUT_S = (0.01, 60.0)
_DEVICE = DeviceConfig(id="", driver="")  # the defaults of the keys every device has


def cached_lookup(lookup: Lookup) -> Lookup:
    seen: dict[str, OptionSet] = {}

    def cached(kind: str, place: str) -> OptionSet:
        if kind not in seen:
            seen[kind] = lookup(kind, place)
        return seen[kind]

    return cached


def read_device(s: Section, lookup: Lookup) -> DeviceConfig:
    """The keys every device has; the rest are the driver's (its OptionSet, config/options.py)."""
    driver = s.text("driver")
    declared = lookup(driver, s.at("driver"))
    (lo_ms, hi_ms), (lo_s, hi_s) = INTERVAL_MS, TIMEOUT_S
    cfg = DeviceConfig(
        id=s.ident("id"),
        driver=driver,
        interval_ms=s.integer("interval_ms", _DEVICE.interval_ms, lo=lo_ms, hi=hi_ms),
        timeout_s=s.number("timeout_s", _DEVICE.timeout_s, lo=lo_s, hi=hi_s),
        options=read_options(declared.device, s, MISSING) if declared.device else None,
        points=tuple(read_point(p, declared) for p in s.tables("points")),
    )
    s.done()
    unique((p.id for p in cfg.points), s.at("points"), "id")
    if declared.check is not None:
        declared.check(cfg, s.at)
    return cfg


def check_across(devices: tuple[DeviceConfig, ...], lookup: Lookup) -> None:
    """Each driver's rules across its devices (e.g. one setting per shared serial bus)."""
    by_driver: dict[str, list[Placed]] = {}
    for i, d in enumerate(devices):
        by_driver.setdefault(d.driver, []).append(Placed(i, d))
    for driver, placed in by_driver.items():
        check_all = lookup(driver, f"devices[{placed[0].index}].driver").check_all
        if check_all is not None:
            check_all(placed)


def read_point(s: Section, declared: OptionSet) -> PointConfig:
    """A point: id and interval_ms here, the rest from the driver's point schema."""
    base = PointConfig(
        id=s.ident("id"),
        interval_ms=s.opt_integer("interval_ms", lo=INTERVAL_MS[0], hi=INTERVAL_MS[1]),
    )
    if declared.point is None or declared.make_point is None:
        cfg = replace(base, unit=s.text("unit", base.unit))
        s.done()
        return cfg
    values = read_options(declared.point, s, MISSING)
    s.done()
    return cast(PointConfig, declared.make_point(values, base, s.at))


def unique(values: Any, place: str, key: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(
                f"{place}[{i}].{key}", f"{v!r} is used twice", "give each a unique id"
            )
        seen.add(v)
