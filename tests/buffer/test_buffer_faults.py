"""The buffer under faults: a full disk, a corrupt file, a read-only directory; and group commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI

from gatewayd.buffer import Buffer, BufferOpenError, Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record


def recs(n: int, lane: Lane = Lane.TELEMETRY, start: int = 0) -> list[Record]:
    return [
        Record(f"d/p{i % 40}", 1_760_000_000_000 + i, float(i), lane=lane)
        for i in range(start, start + n)
    ]


def ids_in(path: Path) -> dict[int, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT id, lane FROM records"))


@contextlib.contextmanager
def tmpfs(where: Path, size: str, ro: bool = False) -> Iterator[Path]:
    """A small real file system (root only); skips where mounting is not allowed, except under
    CI=true (CI runs as root and must run these)."""
    where.mkdir()
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=False)
    if r.returncode != 0:
        msg = "cannot mount a tmpfs here (needs root)"
        if IN_CI:
            pytest.fail(f"{msg}; CI must allow it", pytrace=False)
        pytest.skip(msg)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_until_full(store: Store, rounds: int) -> tuple[list[int], list[int]]:
    """Append telemetry batches; returns (ids kept, ids reported 0)."""
    kept: list[int] = []
    dropped = 0
    for i in range(rounds):
        ids = store.append(recs(200, start=i * 200))
        kept += [x for x in ids if x]
        dropped += ids.count(0)
    return kept, [0] * dropped


def test_sqlite_full_evicts_oldest_telemetry_counts_it_and_keeps_appending(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    store = Store(path, BufferConfig())  # a 256 MiB bound that the "disk" reaches first
    alarms = store.append(recs(5, Lane.ALARM))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    # SQLite's own size cap stands in for a full disk: the same SQLITE_FULL error.
    store._db.execute(f"PRAGMA max_page_count = {pages + 60}")
    kept, dropped = fill_until_full(store, 40)  # 8000 readings, ~1 MB: far beyond 60 pages
    stats = store.snapshot()
    assert stats.evicted.get("telemetry/disk_full", 0) > 0
    assert not dropped, "older telemetry was evicted instead of dropping new readings"
    assert stats.depth + stats.evicted["telemetry/disk_full"] == 5 + 8000
    left = ids_in(path)
    assert all(a in left for a in alarms), "alarms are never evicted while telemetry remains"
    assert kept[-200:] == sorted(left)[-200:], "the newest readings are kept"
    assert stats.appended == 5 + 8000, "every append returned and kept its records"
    store.close()
    assert (
        Store(path, BufferConfig()).snapshot().evicted["telemetry/disk_full"]
        == (stats.evicted["telemetry/disk_full"])
    ), "eviction counts are stored with the data"


def test_a_full_disk_of_alarms_drops_incoming_telemetry_never_an_alarm(tmp_path: Path) -> None:
    # Found by the model test: the disk-full shrink evicted stored alarms without looking at
    # what was coming in, and the retried append then stored the lower lane's records.
    path = tmp_path / "b.sqlite"
    store = Store(path, BufferConfig())
    alarms = store.append(recs(2000, Lane.ALARM))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    returned: list[int] = []
    for i in range(20):
        returned += store.append(recs(200, start=i * 200))
    stats = store.snapshot()
    assert not [k for k in stats.evicted if k.startswith("alarm/")], stats.evicted
    assert all(a in ids_in(path) for a in alarms), "an alarm was evicted for telemetry"
    dropped = returned.count(0)
    assert dropped > 0 and stats.evicted.get("telemetry/disk_full", 0) >= dropped
    assert stats.depth + sum(stats.evicted.values()) == 2000 + 4000, "every record counted"


def test_filling_file_system_is_handled_like_a_full_buffer(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "4m") as mnt:
        store = Store(mnt / "b.sqlite", BufferConfig())
        alarms = store.append(recs(3, Lane.ALARM))
        kept, _ = fill_until_full(store, 100)  # 20000 readings, over 4 MiB on disk
        stats = store.snapshot()
        assert stats.evicted.get("telemetry/disk_full", 0) > 0
        assert stats.depth + sum(stats.evicted.values()) == 3 + 20000
        assert all(a in ids_in(mnt / "b.sqlite") for a in alarms)
        assert store.append(recs(1))[0] > max(kept), "still appending after the disk filled"
        store.close()


def test_corrupt_file_is_moved_aside_reported_and_a_fresh_buffer_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.sqlite"
    store = Store(path, BufferConfig())
    old = store.append(recs(3000))
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # garbage over a few pages in the middle of the file
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(3 * 4096))
    with caplog.at_level(logging.ERROR, logger="gatewayd.buffer"):
        fresh = Store(path, BufferConfig())
    moved = fresh.quarantined
    assert len(moved) == 1 and moved[0].name.startswith("b.sqlite.corrupt-")
    assert moved[0].stat().st_size == size, "the corrupt file is kept for inspection"
    assert "buffer_quarantined" in caplog.text and str(moved[0]) in caplog.text
    stats = fresh.snapshot()
    assert stats.quarantined == 1
    assert stats.depth + stats.evicted["telemetry/corrupt"] == 3000, "salvaged or counted"
    new = fresh.append(recs(2))
    assert min(new) > max(old), "ids of the fresh buffer never repeat the corrupt one's"
    taken = [e.id for e in fresh.take(5000, 1 << 30)]
    assert taken[-2:] == new and set(taken[:-2]) <= set(old), "salvaged records keep their ids"


def test_file_that_is_not_a_database_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite"
    path.write_bytes(b"this is not SQLite" * 500)
    store = Store(path, BufferConfig())
    assert store.quarantined and store.append(recs(1))[0] > 0


def test_read_only_directory_is_a_clear_start_up_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        ctx: contextlib.AbstractContextManager[Path] = contextlib.nullcontext(ro)
    else:  # root writes through permission bits: use a read-only mount
        ctx = tmpfs(tmp_path / "ro", "64k", ro=True)
    with ctx as d, pytest.raises(BufferOpenError) as err:
        Store(d / "b.sqlite", BufferConfig())
    assert str(d) in str(err.value) and "not writable" in str(err.value)


def test_concurrent_appends_share_commits_and_each_gets_its_own_ids(tmp_path: Path) -> None:
    async def go() -> tuple[list[list[int]], int]:
        buf = await Buffer.open(tmp_path / "b.sqlite", BufferConfig(sync="full"))
        try:
            results = await asyncio.gather(*(buf.append(recs(3, start=i * 3)) for i in range(60)))
            return list(results), buf.commits
        finally:
            await buf.close()

    results, commits = asyncio.run(go())
    flat = [i for ids in results for i in ids]
    assert len(set(flat)) == 180 and all(i > 0 for i in flat)
    assert all(ids == list(range(ids[0], ids[0] + 3)) for ids in results)
    assert commits < 60, f"{commits} commits for 60 concurrent appends: no group commit"


def test_corruption_found_while_running_replaces_the_file_and_counts_the_loss(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.sqlite"
    store = Store(path, BufferConfig())
    old = store.append(recs(3000))
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store._db.execute("PRAGMA cache_size=1")  # so the next read comes from the damaged file
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(2 * 4096)
        f.write(os.urandom(size - 3 * 4096))
    assert store.take(10, 1 << 20) == [], "the uplink gets nothing, not an exception"
    assert len(store.quarantined) == 1 and store.quarantined[0].exists()
    new = store.append(recs(2))
    assert min(new) > max(old)
    stats = store.snapshot()
    assert set(stats.evicted) == {"telemetry/corrupt"}
    assert stats.evicted["telemetry/corrupt"] + stats.salvaged == 3000
    assert stats.depth == stats.salvaged + 2
    taken = [e.id for e in store.take(5000, 1 << 30)]
    assert taken[-2:] == new and set(taken[:-2]) <= set(old)


def test_disk_full_bound_follows_the_real_free_space_in_both_directions(tmp_path: Path) -> None:
    """A real file system filled by another file: the buffer settles at what fits instead of
    ratcheting down check after check (freed pages inside the file count as free), and stops
    evicting at the first check after the other file is deleted."""
    with tmpfs(tmp_path / "small", "24m") as mnt:
        store = Store(mnt / "b.sqlite", BufferConfig())
        store.append(recs(200))
        st = os.statvfs(mnt)
        ballast = mnt / "ballast"
        with open(ballast, "wb") as f:  # leave 8 MiB: 6 MiB above the reserve
            f.write(b"\0" * (st.f_bavail * st.f_frsize - (8 << 20)))

        def append_checked(i: int) -> int:
            store._bound.next_statvfs = 0.0  # the once-a-second space check, at every append here
            assert all(store.append(recs(200, start=i * 200)))
            return store.snapshot().depth

        i = 1
        while not store.snapshot().evicted.get("telemetry/disk_full"):
            append_checked(i)
            i += 1
            assert i < 2000, "the disk never counted as full"
        for _ in range(30):  # let the first eviction settle
            i += 1
            settled = append_checked(i)
        depths = [append_checked(i + k) for k in range(1, 200)]  # 40,000 readings more
        i += 200
        assert min(depths) >= settled * 0.9, (
            f"the bound ratchets down: {settled} records when full, {min(depths)} later"
        )
        ballast.unlink()  # space comes back
        append_checked(i)
        before = store.snapshot().evicted["telemetry/disk_full"]
        for k in range(1, 20):
            append_checked(i + k)
        assert store.snapshot().evicted["telemetry/disk_full"] == before, (
            "eviction went on after space came back"
        )
        store.close()


def test_a_disk_short_of_its_reserve_keeps_the_file_in_use_and_live_records_flowing(
    tmp_path: Path,
) -> None:
    """A file system with less free space than the reserve (here 3 MB, the WAL and the file
    taking the rest): the pages the file already has cost no disk, so the buffer keeps using
    them. Seen in the scorecard's quick disk_full part: the bound fell to zero and below, every
    incoming record was evicted at the door, alarms included, even while the uplink delivered."""
    with tmpfs(tmp_path / "small", "3m") as mnt:
        store = Store(mnt / "b.sqlite", BufferConfig())
        for i in range(400):  # an outage: nothing taken, the file and its WAL fill the disk
            store._bound.next_statvfs = 0.0
            store.append(recs(200, start=i * 200))
        assert store.snapshot().evicted.get("telemetry/disk_full"), "the disk never filled"
        store.take(1 << 20, 1 << 40)
        store.ack([e.id for e in store.peek(1 << 20)])  # the uplink is back: the backlog goes
        kept = 0
        for k in range(200):  # then the live flow: each poll taken and acked
            store._bound.next_statvfs = 0.0
            batch = recs(99, start=(400 + k) * 200) + recs(1, Lane.ALARM, start=k)
            ids = store.append(batch)
            kept += sum(1 for x in ids if x)
            assert ids[-1], f"poll {k}: an alarm evicted at the door while the uplink delivers"
            store.ack([e.id for e in store.take(1000, 1 << 30)])
        assert kept == 200 * 100, f"live records evicted at the door: {200 * 100 - kept}"
        store.close()
