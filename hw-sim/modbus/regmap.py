"""Register maps from a TOML file, so users and tests describe a simulated device as data.

```toml
[[units]]
id = 1
[[units.registers]]
table = "holding"        # coil, discrete, input, holding
address = 0
type = "int16"           # int16 uint16 int32 uint32 int64 uint64 float32 float64 bool
order = "ABCD"           # ABCD CDAB BADC DCBA
scale = 0.1
value = -123.4           # a constant, or:
# signal = "sine"        # constant counter ramp sine random_walk, with its parameters:
# mean = 20.0, amplitude = 5.0, period_s = 60.0

# Optional, per unit: registers that exist (others answer exception 02), and faults
# (see faults.py: delay_s, exception, drop, truncate, short, wrong_unit, wrong_function,
# wrong_transaction, bad_crc, disconnect, times).
[[units]]
id = 2
defined = [[0, 9], [20, 29]]
faults = { delay_s = 0.05, exception = 6, times = 3 }
```
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import signals
from .encode import to_words
from .faults import Faults
from .slave import Slave

_SIGNALS: dict[str, Any] = {
    "constant": lambda r: signals.constant(r["value"]),
    "counter": lambda r: signals.counter(r.get("step", 1.0), r.get("period_s", 1.0)),
    "ramp": lambda r: signals.ramp(r["lo"], r["hi"], r["period_s"]),
    "sine": lambda r: signals.sine(r["mean"], r["amplitude"], r["period_s"]),
    "random_walk": lambda r: signals.random_walk(
        r["start"], r["step"], r["lo"], r["hi"], r.get("seed", 0)
    ),
}


def load_map(slave: Slave, path: str | Path) -> None:
    doc = tomllib.loads(Path(path).read_text())
    apply_map(slave, doc)


def apply_map(slave: Slave, doc: dict[str, Any]) -> None:
    for i, unit in enumerate(doc.get("units", [])):
        uid = int(unit.get("id", 1))
        model = slave.unit(uid)
        if "defined" in unit:
            model.defined = {a for lo, hi in unit["defined"] for a in range(lo, hi + 1)}
        known = {f.name for f in fields(Faults)}
        for key, value in unit.get("faults", {}).items():
            if key not in known:
                raise ValueError(
                    f"units[{i}].faults.{key}: unknown fault; use one of {sorted(known)}"
                )
            setattr(slave.faults(uid), key, value)
        for r in unit.get("registers", []):
            table, address = r["table"], int(r["address"])
            if table in ("coil", "discrete"):
                bits = model.coils if table == "coil" else model.discrete
                bits[address] = int(bool(r["value"]))
                continue
            dtype, order = r.get("type", "uint16"), r.get("order", "ABCD")
            scale = r.get("scale", 1.0)
            signal = _SIGNALS[r.get("signal", "constant")](r)
            slave.feed(uid, table, address, signal, _encoder(dtype, order, scale))


def _encoder(dtype: str, order: str, scale: float) -> Any:
    return lambda v: to_words(v, dtype, order, scale)
