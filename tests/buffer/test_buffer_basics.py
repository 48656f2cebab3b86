"""Basic contract of the SQLite outbox: order, ack-to-delete, rewind, ids across re-creation."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.buffer import BufferOpenError, Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record


def recs(n: int, lane: Lane = Lane.TELEMETRY, start: int = 0) -> list[Record]:
    return [
        Record(f"d/p{i}", 1_700_000_000_000 + i, float(i), lane=lane)
        for i in range(start, start + n)
    ]


def test_alarms_leave_before_telemetry_and_order_is_kept(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.sqlite", BufferConfig())
    tele = s.append(recs(3))
    alarms = s.append(recs(2, Lane.ALARM))
    taken = s.take(10, 1 << 20)
    assert [e.id for e in taken] == alarms + tele
    assert taken[0].record().lane is Lane.ALARM


def test_only_ack_deletes_and_rewind_resends_unacked(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    s = Store(path, BufferConfig())
    ids = s.append(recs(5))
    first = s.take(2, 1 << 20)
    assert s.take(10, 1 << 20)[0].id == ids[2], "taken records are in flight, not taken twice"
    s.ack([e.id for e in first])
    s.rewind()
    assert [e.id for e in s.take(10, 1 << 20)] == ids[2:]
    s.close()
    reopened = Store(path, BufferConfig())
    assert [e.id for e in reopened.take(10, 1 << 20)] == ids[2:], "unacked survive a restart"


def test_ids_never_repeat_across_recreation(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    s = Store(path, BufferConfig())
    old = s.append(recs(3))
    s.ack(old)
    s.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    new = Store(path, BufferConfig()).append(recs(3))
    assert min(new) > max(old)


def test_full_buffer_evicts_oldest_telemetry_and_counts(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.sqlite", BufferConfig(max_bytes=64 * 1024))
    alarm = s.append(recs(1, Lane.ALARM))
    for i in range(40):
        s.append(recs(50, start=i * 50))
    stats = s.snapshot()
    assert stats.bytes <= 64 * 1024
    assert stats.evicted["telemetry/full"] > 0
    assert s.take(1, 1 << 20)[0].id == alarm[0], "alarms are never evicted while telemetry remains"
    assert stats.depth + stats.evicted["telemetry/full"] == 1 + 40 * 50


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BufferOpenError, match="directory does not exist"):
        Store(tmp_path / "nope" / "b.sqlite", BufferConfig())


def test_telemetry_older_than_max_age_is_dropped_and_counted_alarms_stay(tmp_path: Path) -> None:
    now = [1_765_000_000_000]  # after the build date: a plausible clock
    s = Store(tmp_path / "b.sqlite", BufferConfig(max_age_s=600), now=lambda: now[0])
    old = [Record("d/p", now[0] - 700_000, 1.0), Record("d/p", now[0] - 650_000, 2.0)]
    old_alarm = Record("d/hi", now[0] - 3_600_000, True, lane=Lane.ALARM)
    s.append([*old, old_alarm])
    fresh = s.append([Record("d/p", now[0] - 1000, 3.0)])
    assert s.snapshot().evicted == {"telemetry/age": 2}
    taken = s.take(10, 1 << 20)
    assert [e.record().point for e in taken] == ["d/hi", "d/p"] and taken[1].id == fresh[0]


def test_expiry_waits_for_a_plausible_clock(tmp_path: Path) -> None:
    s = Store(tmp_path / "b.sqlite", BufferConfig(max_age_s=600), now=lambda: 86_400_000)
    s.append([Record("d/p", 0, 1.0), Record("d/p", 1, 2.0)])  # a Pi booted in 1970
    assert s.snapshot().evicted == {} and s.snapshot().depth == 2


def test_file_gives_its_space_back_once_a_backlog_is_drained(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    s = Store(path, BufferConfig())
    for i in range(40):
        s.append(recs(1000, start=i * 1000))
    s.close()  # checkpoints the WAL into the file
    full = path.stat().st_size
    s = Store(path, BufferConfig())
    while batch := s.take(500, 1 << 20):
        s.ack([e.id for e in batch])
    for _ in range(20):  # the uplink's idle polls
        assert s.take(500, 1 << 20) == []
    s.append(recs(10))  # and life goes on in the same file
    s.close()
    assert full > 3 << 20
    assert path.stat().st_size < full * 0.4, f"{path.stat().st_size} of {full} bytes kept"
