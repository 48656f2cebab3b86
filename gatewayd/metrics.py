"""Counters and gauges for every stage, rendered as Prometheus text."""

from __future__ import annotations

from collections.abc import Iterator

Key = tuple[str, tuple[tuple[str, str], ...]]


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        self.gauges: dict[Key, float] = {}

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + n

    def total_from(self, name: str, value: float, **labels: str) -> None:
        """Set a counter to a running total kept elsewhere (e.g. the buffer's eviction counts)."""
        self.counters[(name, tuple(sorted(labels.items())))] = value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def drop(self, name: str, **match: str) -> None:
        """Forget the gauge series of `name` whose labels include `match` (e.g. an old reason)."""
        want = set(match.items())
        for key in [k for k in self.gauges if k[0] == name and want <= set(k[1])]:
            del self.gauges[key]

    def get(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.counters.get(key, self.gauges.get(key, 0))

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def render(self) -> str:
        return "".join(self._lines())

    def _lines(self) -> Iterator[str]:
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            seen: set[str] = set()
            for (name, labels), value in sorted(table.items()):
                full = f"gatewayd_{name}_total" if kind == "counter" else f"gatewayd_{name}"
                if full not in seen:
                    seen.add(full)
                    yield f"# TYPE {full} {kind}\n"
                lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                v = _number(value)
                yield f"{full}{{{lab}}} {v}\n" if lab else f"{full} {v}\n"


def _number(v: float) -> str:
    # Exact: timestamps and large counters must not be rounded to 6 digits.
    if v != v or v in (float("inf"), float("-inf")):
        return {True: "NaN"}.get(v != v, "+Inf" if v > 0 else "-Inf")
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
