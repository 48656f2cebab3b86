"""One clock-plausibility date: gatewayd.clock.PLAUSIBLE_S. No other module of the gateway (nor
hw-sim) writes an epoch date of its own, in seconds, milliseconds or as a datetime, that could
drift from it; the buffer, the poller, the daemon's restamp and the uplink's hold import it."""

from __future__ import annotations

import ast
from pathlib import Path

from gatewayd.clock import PLAUSIBLE_MS, PLAUSIBLE_S

ROOT = Path(__file__).resolve().parents[2]
# Epochs from 2011 to 2049: any plausible "not before" date, in seconds or in milliseconds.
SECONDS = range(1_300_000_000, 2_500_000_000)
MILLIS = range(1_300_000_000_000, 2_500_000_000_000)


def _dates(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Constant)
            and type(node.value) in (int, float)
            and (int(node.value) in SECONDS or int(node.value) in MILLIS)
        ):
            out.append(f"{node.lineno}: {node.value!r}")
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("datetime", "date")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, int)
            and 1990 <= node.args[0].value <= 2100
        ):
            out.append(f"{node.lineno}: datetime({node.args[0].value}, ...)")
    return out


def test_no_second_plausibility_date() -> None:
    found = {}
    for top in ("gatewayd", "drivers", "buffer", "config", "hw-sim"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel != "gatewayd/clock.py" and (hits := _dates(path)):
                found[rel] = hits
    assert found == {}, "use gatewayd.clock.PLAUSIBLE_S / PLAUSIBLE_MS"
    assert [h.split(": ")[1] for h in _dates(ROOT / "gatewayd/clock.py")] == [repr(PLAUSIBLE_S)]


def test_its_users_import_it() -> None:
    # buffer/eviction.py: expiry by age skips records stamped before the clock was set.
    for rel in ("buffer/eviction.py", "gatewayd/polling.py", "gatewayd/daemon.py"):
        tree = ast.parse((ROOT / rel).read_text())
        names = {
            a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module == "gatewayd.clock"
            for a in n.names
        }
        assert "PLAUSIBLE_MS" in names, rel
    assert PLAUSIBLE_MS == PLAUSIBLE_S * 1000
