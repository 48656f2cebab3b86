"""The synchronous SQLite outbox. One thread owns a Store; `Buffer` is its asyncio face.

On-disk layout:
- table `records(id INTEGER PRIMARY KEY AUTOINCREMENT, lane, ts_ms, body)`; `body` is the
  record's canonical JSON (see codec), without the id;
- AUTOINCREMENT guarantees an id is never reused within a file; a new file starts its sequence
  at `incarnation << 40`, the incarnation counted in a sidecar `<file>.incarnation`, so ids never
  repeat across re-creation either (2^40 ids per incarnation, JSON-safe up to 8192 incarnations);
- in-flight state lives only in memory (a per-lane cursor): after a crash everything not acked is
  simply taken again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.config import BufferConfig
from gatewayd.errors import PlacedError
from gatewayd.files import write_atomic
from gatewayd.reading import Lane, Record

from .codec import decode_body, encode_body

ID_BITS = 40
# Per-row bytes beyond the body (rowid, lane, ts, b-tree cell), for the size bound.
ROW_OVERHEAD = 24

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_lane ON records (lane, id);
"""


class BufferOpenError(PlacedError):
    """The buffer file cannot be opened or created (missing or read-only directory, ...)."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    lane: int
    body: str

    def record(self) -> Record:
        return decode_body(self.body, self.lane)


@dataclass(slots=True)
class Stats:
    depth: int = 0
    bytes: int = 0
    oldest_ts_ms: int | None = None
    depth_by_lane: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)  # "lane/reason" -> count
    appended: int = 0
    acked: int = 0
    file_bytes: int = 0


class Store:
    def __init__(self, path: str | Path, cfg: BufferConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        directory = self.path.parent
        if not directory.is_dir():
            raise BufferOpenError(
                str(directory),
                "directory does not exist",
                "create it, or set [gateway] state_dir / [buffer] path",
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise BufferOpenError(
                str(directory),
                "directory is not writable",
                "give the gatewayd user write access (systemd: StateDirectory=)",
            )
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if cfg.sync == 'full' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            if fresh:
                self._seed_ids()
        except sqlite3.Error as exc:
            raise BufferOpenError(
                str(self.path), f"cannot open: {exc}", "check the file system and free space"
            ) from exc
        self._cursor = {lane: 0 for lane in Lane}
        self.stats = Stats()
        self._bytes = self._db.execute(
            f"SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * {ROW_OVERHEAD}, 0) FROM records"
        ).fetchone()[0]

    def _seed_ids(self) -> None:
        sidecar = self.path.with_name(self.path.name + ".incarnation")
        try:
            incarnation = int(sidecar.read_text().strip()) + 1
        except (OSError, ValueError):
            incarnation = 1
        write_atomic(sidecar, f"{incarnation}\n")
        self._db.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)",
            (incarnation << ID_BITS,),
        )

    def append(self, records: Sequence[Record]) -> list[int]:
        """Commit records in one transaction; returns their ids in order."""
        rows = [(int(r.lane), r.ts_ms, encode_body(r)) for r in records]
        added = sum(len(b) for _, _, b in rows) + ROW_OVERHEAD * len(rows)
        self._make_room(added)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            first = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
            db.executemany("INSERT INTO records (lane, ts_ms, body) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        start = (first[0] if first else 0) + 1
        self._bytes += added
        self.stats.appended += len(rows)
        return list(range(start, start + len(rows)))

    def _make_room(self, incoming: int) -> None:
        """Evict the oldest telemetry until `incoming` bytes fit under the bound."""
        excess = self._bytes + incoming - self.cfg.max_bytes
        if excess <= 0:
            return
        freed = 0
        evicted = 0
        rows = self._db.execute(
            "SELECT id, LENGTH(body) FROM records WHERE lane = ? ORDER BY id",
            (int(Lane.TELEMETRY),),
        )
        last = None
        for rid, size in rows:
            freed += size + ROW_OVERHEAD
            evicted += 1
            last = rid
            if freed >= excess:
                break
        if last is not None:
            self._db.execute(
                "DELETE FROM records WHERE lane = ? AND id <= ?", (int(Lane.TELEMETRY), last)
            )
            self._bytes -= freed
            key = "telemetry/full"
            self.stats.evicted[key] = self.stats.evicted.get(key, 0) + evicted

    def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        """The next records not yet in flight, highest-priority lane first, in id order."""
        out: list[Entry] = []
        size = 0
        for lane in Lane:
            if len(out) >= max_records:
                break
            rows = self._db.execute(
                "SELECT id, body FROM records WHERE lane = ? AND id > ? ORDER BY id LIMIT ?",
                (int(lane), self._cursor[lane], max_records - len(out)),
            ).fetchall()
            for rid, body in rows:
                if out and size + len(body) > max_bytes:
                    return out
                out.append(Entry(rid, int(lane), body))
                size += len(body)
                self._cursor[lane] = rid
        return out

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged records; unknown ids (already acked or evicted) are ignored."""
        idl = [(i,) for i in ids]
        if not idl:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            # Sizes first, so the byte bound stays exact without a full re-scan.
            freed = 0
            for chunk in _chunks(idl, 500):
                marks = ",".join("?" * len(chunk))
                args = [i for (i,) in chunk]
                freed += db.execute(
                    f"SELECT COALESCE(SUM(LENGTH(body)) + COUNT(*) * {ROW_OVERHEAD}, 0) "
                    f"FROM records WHERE id IN ({marks})",
                    args,
                ).fetchone()[0]
                db.execute(f"DELETE FROM records WHERE id IN ({marks})", args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        n = db.total_changes - before
        self._bytes -= freed
        self.stats.acked += n
        return n

    def rewind(self) -> None:
        """Forget what is in flight: the next take starts again at the oldest unacked record."""
        self._cursor = {lane: 0 for lane in Lane}

    def snapshot(self) -> Stats:
        s = self.stats
        s.depth_by_lane = {
            Lane(lane).name.lower(): n
            for lane, n in self._db.execute("SELECT lane, COUNT(*) FROM records GROUP BY lane")
        }
        s.depth = sum(s.depth_by_lane.values())
        s.bytes = self._bytes
        s.oldest_ts_ms = self._db.execute("SELECT MIN(ts_ms) FROM records").fetchone()[0]
        try:
            s.file_bytes = self.path.stat().st_size
        except OSError:
            s.file_bytes = 0
        return Stats(
            s.depth,
            s.bytes,
            s.oldest_ts_ms,
            dict(s.depth_by_lane),
            dict(s.evicted),
            s.appended,
            s.acked,
            s.file_bytes,
        )

    def peek(self, n: int, lane: Lane | None = None) -> list[Entry]:
        if lane is None:
            q = self._db.execute(
                "SELECT id, lane, body FROM records ORDER BY lane, id LIMIT ?", (n,)
            )
        else:
            q = self._db.execute(
                "SELECT id, lane, body FROM records WHERE lane = ? ORDER BY id LIMIT ?",
                (int(lane), n),
            )
        return [Entry(i, la, b) for i, la, b in q]

    def close(self) -> None:
        self._db.close()


def _chunks(seq: list[tuple[int]], n: int) -> Iterable[list[tuple[int]]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
