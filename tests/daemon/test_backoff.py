"""The one backoff (gatewayd/backoff.py): its properties, each former formula's delays kept, and
no second doubling formula left in the gateway's code."""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gatewayd.backoff import exponential, full_jitter
from gatewayd.polling import restart_delay_s
from gatewayd.uplink.channels.base import THROTTLE_BASE_S, THROTTLE_CAP_S, Throttle

ROOT = Path(__file__).resolve().parents[2]

attempts = st.integers(min_value=-3, max_value=10_000)
bases = st.floats(min_value=1e-3, max_value=3600.0)
caps = st.floats(min_value=1e-3, max_value=24 * 3600.0)


@given(attempts, bases, caps)
def test_bounded_by_the_cap_and_never_below_the_first_step(n: int, base: float, cap: float) -> None:
    d = exponential(n, base, cap)
    assert math.isfinite(d)
    assert min(base, cap) <= d <= cap


@given(attempts, bases, caps)
def test_grows_until_the_cap(n: int, base: float, cap: float) -> None:
    now, later = exponential(n, base, cap), exponential(n + 1, base, cap)
    assert later >= now
    if n >= 0 and later < cap:  # below the cap each step doubles
        assert later == 2 * now


@given(attempts, bases, caps, st.integers(min_value=0, max_value=2**32))
def test_full_jitter_stays_within_zero_and_the_step(
    n: int, base: float, cap: float, seed: int
) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        assert 0.0 <= full_jitter(n, base, cap, rng) <= exponential(n, base, cap)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    draws = [full_jitter(3, 1.0, 60.0, rng) for _ in range(2000)]
    assert max(draws) <= 8.0
    # Each eighth of [0, 8] gets a share: a draw from the range, not a fixed step.
    assert all(any(k <= d < k + 1 for d in draws) for k in range(8))


def test_the_first_retry_waits_the_base() -> None:
    assert exponential(0, 0.5, 30.0) == 0.5
    assert exponential(1, 0.5, 30.0) == 1.0
    assert exponential(10**9, 0.5, 30.0) == 30.0


def test_driver_rebuild_keeps_its_delays() -> None:
    # Before: min(60.0, 0.5 * 2 ** min(max(failures - 1, 0), 7)).
    assert [restart_delay_s(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]
    assert restart_delay_s(0) == 0.5


def test_throttle_keeps_its_pauses_and_resets_on_success() -> None:
    t = Throttle()
    assert not t.probing
    pauses = [t.throttled(100.0) for _ in range(9)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert (THROTTLE_BASE_S, THROTTLE_CAP_S) == (1.0, 60.0)
    assert t.probing and t.blocked(159.0) and not t.blocked(160.0)
    t.succeeded()
    assert not t.probing
    assert t.throttled(200.0) == 1.0


def _is_two(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value in (2, 2.0)


def _doubling_formulas(path: Path) -> list[int]:
    """Lines of `2 ** x` (x not a constant), or of a doubling capped by min: `min(cap, x * 2)`."""
    tree = ast.parse(path.read_text(), str(path))
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Pow)
            and _is_two(node.left)
            and not isinstance(node.right, ast.Constant)
        ):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "min":
            lines += [
                m.lineno
                for arg in node.args
                for m in ast.walk(arg)
                if isinstance(m, ast.BinOp)
                and isinstance(m.op, ast.Mult)
                and (_is_two(m.left) or _is_two(m.right))
            ]
    return sorted(set(lines))


# Doubling that cannot use gatewayd.backoff.
NOT_A_BACKOFF = {
    "gatewayd/backoff.py",  # the one formula
    # A third-party driver by design: it imports only the plugin contract (drivers/README.md),
    # so its reconnect delay keeps its own min(cap, base * 2**n).
    "drivers/opcua/driver.py",
}


def test_no_second_doubling_formula_in_the_gateway() -> None:
    found = {}
    for top in ("gatewayd", "drivers", "buffer", "config"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel not in NOT_A_BACKOFF and (lines := _doubling_formulas(path)):
                found[rel] = lines
    assert found == {}, "use gatewayd.backoff.exponential (or say in NOT_A_BACKOFF why not)"
