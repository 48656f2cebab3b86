"""`buffer_hours_left`: the free bound over the current append rate, as the Store reports it and
`gatewayd status` shows it (a real SQLite file; the rate is measured over real seconds)."""

from __future__ import annotations

import time
from pathlib import Path

from gatewayd.buffer import Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record
from gatewayd.status import parse, render


def recs(n: int, start: int = 0) -> list[Record]:
    return [
        Record(f"d/p{i % 40}", 1_760_000_000_000 + i, float(i), lane=Lane.TELEMETRY)
        for i in range(start, start + n)
    ]


def test_hours_left_is_the_free_bound_over_the_append_rate(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db", BufferConfig(max_bytes=50 << 20))
    try:
        assert store.snapshot().hours_left == float("inf")  # nothing appended yet
        t0 = time.monotonic()
        store.append(recs(500))
        appended = store.appended_bytes
        assert appended > 0
        time.sleep(1.1)  # the rate is sampled at most once a second
        st = store.snapshot()
        elapsed = time.monotonic() - t0
        free = (50 << 20) - st.bytes
        # rate = appended / (time between the two samples): at least 1.1 s, at most `elapsed`
        assert st.hours_left >= free * 1.1 / appended / 3600 * 0.99
        assert st.hours_left <= free * elapsed / appended / 3600 * 1.01
    finally:
        store.close()


def test_status_shows_the_room_left_and_nothing_while_idle() -> None:
    base = "gatewayd_buffer_depth 10\ngatewayd_buffer_bytes 1000\n"
    busy = render(parse(base + "gatewayd_buffer_hours_left 30\n"), now=0).splitlines()
    assert busy[2].endswith("; room for 1.2 d at this rate"), busy[2]
    idle = render(parse(base + "gatewayd_buffer_hours_left +Inf\n"), now=0).splitlines()
    assert "room for" not in idle[2]
