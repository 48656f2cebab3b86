"""Looking into a buffer file from outside the daemon (the `gatewayd buffer` command).

The daemon may be running on the same file: connections here are read-only except for `purge`,
wait for the daemon's transactions (busy timeout) instead of failing, and never hold a write
lock longer than one statement. The daemon notices a purge through SQLite's data_version and
recounts.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gatewayd.reading import Lane

from .accounting import LANE_NAMES, ROW_OVERHEAD
from .lifecycle import BufferOpenError, file_bytes
from .sql import ID_BITS, LANE_WHERE, TALLY_NAMES
from .store import Entry


def open_file(path: Path, write: bool = False) -> sqlite3.Connection:
    """Open an existing buffer file, read-only unless `write`; BufferOpenError names the path."""
    if not path.is_file():
        raise BufferOpenError(
            str(path), "no buffer file here", "pass --file, or --config with the daemon's config"
        )
    try:
        db = sqlite3.connect(f"file:{path}?mode={'rw' if write else 'ro'}", uri=True)
        db.isolation_level = None
        # A damaged body (see store: "damaged") must not stop a look at the others.
        db.text_factory = lambda b: b.decode("utf-8", "replace")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("SELECT 1 FROM records LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        raise BufferOpenError(
            str(path), f"cannot read it as a buffer: {exc}", "check the path and permissions"
        ) from exc
    return db


def summary(db: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """Depth, bytes and age per lane, eviction totals, id range and file size, in one snapshot."""
    db.execute("BEGIN")  # one read snapshot for every figure
    try:
        lanes: dict[str, dict[str, Any]] = {}
        depth = size = 0
        for lane in Lane:
            n, chars = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records WHERE lane = ?",
                (int(lane),),
            ).fetchone()
            first = db.execute(
                f"SELECT ts_ms FROM records WHERE {LANE_WHERE[int(lane)]} ORDER BY id LIMIT 1",
                (int(lane),),
            ).fetchone()
            lanes[lane.name.lower()] = {"depth": n, "oldest_ts_ms": first[0] if first else None}
            depth += n
            size += chars + n * ROW_OVERHEAD
        evicted = {
            f"{LANE_NAMES[lane]}/{reason}": n
            for lane, reason, n in db.execute(
                "SELECT lane, reason, n FROM evictions ORDER BY lane, reason"
            )
        }
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        seq = int(row[0]) if row else 0
        lo, hi = db.execute("SELECT MIN(id), MAX(id) FROM records").fetchone()
        try:
            damaged = db.execute("SELECT COUNT(*) FROM damaged").fetchone()[0]
        except sqlite3.OperationalError:  # a file from before the damaged table
            damaged = 0
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.execute("COMMIT")
    return {
        "path": str(path),
        "depth": depth,
        "bytes": size,
        "lanes": lanes,
        "evicted": evicted,
        "incarnation": seq >> ID_BITS,
        "last_id": seq,
        "first_pending_id": lo,
        "last_pending_id": hi,
        "file_bytes": file_bytes(path),
        "free_bytes_in_file": free * page_size,
        "pages": pages,
        "damaged_kept": damaged,
        "corrupt_files": sorted(
            p.name
            for p in path.parent.glob(f"{path.name}.corrupt-*")
            if not p.name.endswith("-wal")
        ),
    }


def entries(db: sqlite3.Connection, lane: Lane | None = None) -> Iterator[Entry]:
    """Every record in delivery order (alarms, events, telemetry; by id within a lane)."""
    for la in Lane if lane is None else (lane,):
        last = 0
        while True:  # in pages, so a long export never holds one read snapshot open
            page = _page(db, int(la), last, 5000)
            if not page:
                break
            yield from page
            last = page[-1].id


def _page(db: sqlite3.Connection, lane: int, after: int, n: int) -> list[Entry]:
    rows = db.execute(
        f"SELECT id, body FROM records WHERE {LANE_WHERE[lane]} AND id > ? ORDER BY id LIMIT ?",
        (lane, after, n),
    ).fetchall()
    return [Entry(i, lane, b) for i, b in rows]


def purge(db: sqlite3.Connection) -> dict[str, int]:
    """Delete every record, counted per lane as evicted "<lane>/purged"; returns the counts."""
    db.execute("BEGIN IMMEDIATE")
    try:
        counts = dict(db.execute("SELECT lane, COUNT(*) FROM records GROUP BY lane").fetchall())
        db.execute("DELETE FROM records")
        db.execute("UPDATE sqlite_sequence SET seq = 0 WHERE name IN (?, ?, ?)", TALLY_NAMES)
        db.executemany(
            "INSERT INTO evictions (lane, reason, n) VALUES (?, 'purged', ?) "
            "ON CONFLICT (lane, reason) DO UPDATE SET n = n + excluded.n",
            list(counts.items()),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    with contextlib.suppress(sqlite3.Error):  # cheap now; if the daemon is busy it does it later
        db.execute("VACUUM")
    return {LANE_NAMES[lane]: n for lane, n in counts.items()}
