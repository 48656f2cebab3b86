"""Reading what is still readable out of a buffer file found corrupt, row by row.

Invariants:
- the damaged file is opened read-only and left as it is (it is kept for inspection);
- a row is returned only as SQLite read it, whole: an unreadable page or row is skipped, never
  guessed; bodies come back as the stored bytes (a damaged body is the reader's to judge);
- the walk always moves forward by id, so it ends on any file, however damaged: after an
  unreadable row or page it probes ever further ids until a seek succeeds, then bisects back to
  the first id that can be read again;
- `tally` is the per-lane count of live records the file kept in the same transactions as the
  rows (see sql: TALLY_NAMES), or None when that page is unreadable; `regions` counts the unreadable
  stretches met, so a caller knows whether anything at all was lost.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from . import sql
from .sql import ID_BITS, TALLY_NAMES

# Ids are below 2^63; a probe past the last stored id finds nothing, which ends the walk.
_ID_END = 1 << 62
_CHUNK = 2000


class Damaged:
    """A read-only view of a damaged file; `rows()` yields (id, lane, ts_ms, body as bytes,
    whether the body was stored as text): a copy made from them keeps each value as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.regions = 0  # unreadable stretches met by rows()
        self.gap_ids = 0  # ids spanned by those stretches (an upper bound of the rows lost)
        self.tally: list[int] | None = None
        self.last_seq = 0  # the file's id sequence, when readable
        self.evictions: dict[tuple[int, str], int] = {}
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._db.execute("SELECT 1 FROM records LIMIT 0").fetchall()
        except sqlite3.Error:  # header or schema unreadable: nothing can be found by table
            self.close()
            self.regions = 1
            return
        with contextlib.suppress(sqlite3.Error):
            found = dict(self._db.execute(sql.TALLY_READ, TALLY_NAMES).fetchall())
            seq = self._db.execute(sql.SEQ).fetchone()
            self.last_seq = int(seq[0]) if seq and isinstance(seq[0], int) else 0
            if all(isinstance(found.get(n), int) for n in TALLY_NAMES):
                self.tally = [int(found[n]) for n in TALLY_NAMES]
        with contextlib.suppress(sqlite3.Error):
            for lane, reason, n in self._db.execute(sql.EVICTIONS):
                if lane in (0, 1, 2) and isinstance(reason, str) and isinstance(n, int):
                    self.evictions[(lane, reason)] = n

    def rows(self) -> Iterator[tuple[int, int, int, bytes, int]]:
        db = self._db
        if db is None:
            return
        last = 0
        while True:
            moved = False
            try:
                q = db.execute(
                    "SELECT id, lane, ts_ms, CAST(body AS BLOB), typeof(body) = 'text' "
                    "FROM records WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (last, _CHUNK),
                )
                n = 0
                for row in q:
                    n += 1
                    last = row[0]
                    moved = True
                    yield row
                if n < _CHUNK:
                    return
                continue
            except sqlite3.DatabaseError:
                pass
            if moved:  # read up to the damage: the next attempt starts right at it
                continue
            nxt = self._next_readable(last)
            if nxt is None:
                return
            last = nxt

    def _probe(self, at: int) -> tuple[bool, int | None]:
        """(readable, the first id >= at or None) for a seek to `at`."""
        assert self._db is not None
        try:
            row = self._db.execute(
                "SELECT id FROM records WHERE id >= ? ORDER BY id LIMIT 1", (at,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return False, None
        return True, None if row is None else int(row[0])

    def _next_readable(self, last: int) -> int | None:
        """After a failed read past `last`: the id to continue after (skipping the damage), or
        None when nothing further can be read."""
        self.regions += 1
        ok, first = self._probe(last + 1)
        if ok:  # the page seeks fine but the row itself cannot be read: skip that row
            if first is None:
                return None
            self.gap_ids += 1
            return first
        step = 1
        while True:  # probe ever further until a seek works
            step *= 2
            hi = last + 1 + step
            if hi >= _ID_END:
                self.gap_ids += _spanned(last, self.last_seq + 1)
                return None
            ok, first = self._probe(hi)
            if ok:
                break
        lo = last + 1 + step // 2  # the last failed probe
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok, found = self._probe(mid)
            if ok:
                hi, first = mid, found
            else:
                lo = mid
        end = first if first is not None else max(self.last_seq + 1, last + 1)
        self.gap_ids += _spanned(last, end)
        return hi - 1

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _spanned(last: int, end: int) -> int:
    """Ids strictly between two readable ids that could have been records: from the start of
    `end`'s incarnation when they differ (salvaged older rows, or the start of the file)."""
    base = end >> ID_BITS << ID_BITS
    return max(0, end - max(last, base) - 1)
