"""Buffer benchmark: append rate against raw sqlite3 executemany, drain rate, SD-card writes,
file size after a 1 M-reading outage is drained, and what a salvage recovers from a file with
damaged pages.

    .venv/bin/python bench/bench_buffer.py [--quick] [--dir DIR]

Baseline (same run, same schema, same pragmas): `BEGIN; executemany(INSERT ...); COMMIT` of rows
already encoded. The buffer's figure includes everything `Store.append` does for Record objects:
encoding the JSON body, ids, byte accounting, the bound check. "vs raw" is buffer/raw rate.
Bytes written come from /proc/self/io write_bytes (what this process sent to the block layer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gatewayd.buffer import Buffer, Store
from gatewayd.buffer.codec import encode_body
from gatewayd.buffer.sql import SCHEMA
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record


def readings(n: int, start: int = 0) -> list[Record]:
    return [
        Record(f"boiler{i % 7}/flow_temp", 1_764_000_000_000 + i, 20.0 + (i % 1000) / 10)
        for i in range(start, start + n)
    ]


def write_bytes() -> int:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".incarnation"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def raw_db(path: Path, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(fresh(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    db.execute("PRAGMA wal_autocheckpoint=256")
    db.executescript(SCHEMA)
    return db


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench_append(d: Path, sync: str, batch: int, n: int, rounds: int) -> None:
    """Best of `rounds` alternating runs of each, on fresh files (the machine may be shared)."""
    recs = readings(n)
    batches = [recs[i : i + batch] for i in range(0, n, batch)]
    rows = [[(int(r.lane), r.ts_ms, encode_body(r)) for r in b] for b in batches]
    raw_s = raw_cpu = buf_s = buf_cpu = float("inf")
    wb = 0
    for _ in range(rounds):
        db = raw_db(d / "raw.sqlite", sync)

        def raw(db: sqlite3.Connection = db) -> None:
            for b in rows:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO records (lane, ts_ms, body) VALUES (?, ?, ?)", b)
                db.execute("COMMIT")

        wall, cpu = timed(raw)
        raw_s, raw_cpu = min(raw_s, wall), min(raw_cpu, cpu)
        db.close()
        store = Store(fresh(d / "buf.sqlite"), BufferConfig(sync=sync, max_bytes=1 << 40))
        w0 = write_bytes()

        def buf(store: Store = store) -> None:
            for b in batches:
                store.append(b)

        wall, cpu = timed(buf)
        store.close()  # the final checkpoint's writes count too
        wb = write_bytes() - w0
        buf_s, buf_cpu = min(buf_s, wall), min(buf_cpu, cpu)
    enc = min(timed(lambda: [encode_body(r) for r in recs])[1] for _ in range(3))
    print(
        f"append sync={sync:<6} batch={batch:<4} {n / buf_s:>7.0f} rows/s vs raw {n / raw_s:>7.0f}"
        f"  ratio wall {raw_s / buf_s:.2f} cpu {raw_cpu / buf_cpu:.2f}"
        f" (cpu without JSON encoding {raw_cpu / max(buf_cpu - enc, 1e-9):.2f})"
        f"  {buf_cpu / n * 1e6:.1f} µs cpu/reading, {wb / n:.0f} B written/reading"
    )


def bench_group_commit(d: Path, drivers: int, per_driver: int) -> None:
    """Many drivers appending one reading at a time, sync=full: group commit shares fsyncs."""

    async def go() -> tuple[float, int]:
        buf = await Buffer.open(fresh(d / "gc.sqlite"), BufferConfig(sync="full"))

        async def driver(k: int) -> None:
            for i in range(per_driver):
                await buf.append(readings(1, k * per_driver + i))

        t = time.perf_counter()
        await asyncio.gather(*(driver(k) for k in range(drivers)))
        dt = time.perf_counter() - t
        commits = buf.commits
        await buf.close()
        return dt, commits

    dt, commits = asyncio.run(go())
    n = drivers * per_driver
    print(
        f"group commit sync=full {drivers} drivers x 1 reading: {n / dt:>8.0f} rows/s,"
        f" {commits} commits for {n} appends ({n / commits:.1f} per commit)"
    )


def bench_outage(d: Path, n: int) -> None:
    """Fill n readings (an outage), drain them through take/ack, and look at the file."""
    path = fresh(d / "outage.sqlite")
    store = Store(path, BufferConfig(sync="normal", max_bytes=1 << 40))
    w0 = write_bytes()
    fill_s, _ = timed(lambda: [store.append(readings(1000, i)) for i in range(0, n, 1000)])
    filled = store.snapshot()
    fill_wb = write_bytes() - w0

    def drain() -> None:
        while batch := store.take(500, 256 * 1024):
            store.ack([e.id for e in batch])

    drain_s, drain_cpu = timed(drain)
    drained = store.snapshot()
    w0 = write_bytes()
    idle_s, _ = timed(lambda: [store.take(500, 256 * 1024) for _ in range(100)])
    idle_wb = write_bytes() - w0  # the uplink's idle polls: the VACUUM's turn
    idle = store.snapshot()
    store.close()
    # Raw comparison for the drain: the same select and delete by id, no accounting.
    db = raw_db(d / "raw-outage.sqlite", "normal")
    for i in range(0, n, 1000):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO records (lane, ts_ms, body) VALUES (?, ?, ?)",
            [(int(Lane.TELEMETRY), r.ts_ms, encode_body(r)) for r in readings(1000, i)],
        )
        db.execute("COMMIT")

    def raw_drain() -> None:
        last = 0
        while rows := db.execute(
            "SELECT id, body FROM records WHERE lane = 2 AND id > ? ORDER BY id LIMIT 500",
            (last,),
        ).fetchall():
            last = rows[-1][0]
            ids = [r[0] for r in rows]
            db.execute("BEGIN")
            db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(ids))})", ids)
            db.execute("COMMIT")

    raw_s, raw_cpu = timed(raw_drain)
    db.close()
    mib = 1 << 20
    print(
        f"outage {n} readings: fill {n / fill_s:>8.0f} rows/s, {fill_wb / n:.0f} B written/reading;"
        f" file {filled.file_bytes / mib:.1f} MiB full"
    )
    print(
        f"drain take(500)+ack: {n / drain_s:>8.0f} rows/s vs raw select+delete {n / raw_s:>8.0f}"
        f"  ratio wall {raw_s / drain_s:.2f} cpu {raw_cpu / drain_cpu:.2f}"
        f"  {drain_cpu / n * 1e6:.1f} µs cpu/reading"
    )
    print(
        f"file (with WAL) after draining: {drained.file_bytes / mib:.2f} MiB"
        f" ({drained.file_bytes / filled.file_bytes:.1%} of full);"
        f" after 100 idle takes {idle.file_bytes / mib:.2f} MiB (VACUUM:"
        f" {idle_s:.2f} s, {idle_wb / mib:.1f} MiB written);"
        f" after close {Path(path).stat().st_size / mib:.2f} MiB"
    )


def bench_salvage(d: Path, n: int, bad_pages: int) -> None:
    """A backlog of n readings, `bad_pages` random 4 KiB pages smashed in the closed file, then
    opened again: how many records the salvage recovers, how many are counted, how long it takes.
    Baseline: the same open of the undamaged file (quick_check and recount)."""
    import random

    path = fresh(d / "salvage.sqlite")
    store = Store(path, BufferConfig(max_bytes=1 << 40))
    for i in range(0, n, 1000):
        store.append(readings(1000, i))
    store.close()
    clean_s, _ = timed(lambda: Store(path, BufferConfig(max_bytes=1 << 40)).close())
    rng = random.Random(7)
    pages = path.stat().st_size // 4096
    with open(path, "r+b") as f:
        for page in rng.sample(range(1, pages), bad_pages):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))
    opened: list[Store] = []
    salvage_s, _ = timed(lambda: opened.append(Store(path, BufferConfig(max_bytes=1 << 40))))
    st = opened[0].snapshot()
    opened[0].close()
    corrupt = sum(v for k, v in st.evicted.items() if k.endswith("/corrupt"))
    print(
        f"salvage {n} readings, {bad_pages} of {pages} pages smashed: salvaged {st.salvaged}"
        f" ({st.salvaged / n:.2%}), counted corrupt {corrupt}, unaccounted"
        f" {n - st.salvaged - corrupt}; open {salvage_s:.2f} s vs {clean_s:.2f} s undamaged"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer rows (under a minute)")
    ap.add_argument("--dir", help="where to put the files (default: a temp dir)")
    args = ap.parse_args()
    q = args.quick
    print(f"{platform.machine()} {platform.python_version()} sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        for sync in ("normal", "full"):
            for batch, n in (
                (1, 2000 if q else 5000),
                (100, 50_000),
                (1000, 100_000 if q else 300_000),
            ):
                if sync == "full" and batch == 1:
                    n //= 4
                bench_append(d, sync, batch, n, 3 if q else 5)
        bench_group_commit(d, 20, 25 if q else 100)
        bench_outage(d, 100_000 if q else 1_000_000)
        for bad in (1, 10):
            bench_salvage(d, 20_000 if q else 200_000, bad)
    print(f"(pid {os.getpid()}; write_bytes from /proc/self/io)")


if __name__ == "__main__":
    main()
