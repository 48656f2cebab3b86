"""The Store's exact in-memory counts of its file: live records per lane, their bytes, and the
eviction totals per "<lane>/<reason>".

Invariants (Accounting):
- `depth[lane]` is the number of records of the lane in the file, and `bytes` the sum over them of
  LENGTH(body) + ROW_OVERHEAD, as of the last transaction this connection committed (or the last
  recount): they change only by `apply` of a committed Txn, by a recount (`count_rows`), or
  when the file is replaced (`carry_over`);
- the tally rows of sqlite_sequence (sql.TALLY_NAMES) equal `depth` after every commit: `save`
  writes a transaction's changes to them inside that transaction;
- every eviction ever counted is in exactly one of `evicted` (what the `evictions` table holds as
  of the last commit) and `unsaved` (counted, not yet written: a full disk, an append that could
  not be written, the history of a file found corrupt). `save` writes `unsaved` inside a
  transaction, and only its commit (`apply`) moves it to `evicted`: a rolled-back transaction
  loses no count;
- nothing here decides what to evict or when: it counts what the transactions did.

A Txn is what one transaction changed, kept aside until its COMMIT: a rollback leaves the
accounting as it was, with nothing to undo.
"""

from __future__ import annotations

import contextlib
import sqlite3

from gatewayd.reading import Lane

from . import sql
from .sql import COUNT_EVICTED, TALLY_ADD, TALLY_NAMES

# Per-row bytes beyond the body (rowid, lane, ts, cell header and pointer, page slack), so that
# `bytes` tracks the file's real size for the bound.
ROW_OVERHEAD = 32
LANE_NAMES = {int(lane): lane.name.lower() for lane in Lane}


class Txn:
    """What a transaction changed, applied to the in-memory accounting only after COMMIT."""

    __slots__ = ("bytes", "depth", "evicted", "saved_unsaved", "uncursored")

    def __init__(self) -> None:
        self.saved_unsaved = False
        self.bytes = 0
        self.depth = [0, 0, 0]
        self.evicted: dict[tuple[int, str], int] = {}
        self.uncursored: list[int] = []  # evicted ids that may be in the in-flight map

    def evict(self, lane: int, reason: str, n: int, size: int) -> None:
        self.depth[lane] -= n
        self.bytes -= size
        key = (lane, reason)
        self.evicted[key] = self.evicted.get(key, 0) + n


class Accounting:
    __slots__ = ("bytes", "depth", "evicted", "unsaved")

    def __init__(self) -> None:
        self.depth = [0, 0, 0]
        self.bytes = 0
        self.evicted: dict[tuple[int, str], int] = {}
        self.unsaved: dict[tuple[int, str], int] = {}  # counted but not yet written

    def lost(self, key: tuple[int, str], n: int) -> None:
        """Count records gone without a transaction to write it in (written by the next one)."""
        self.unsaved[key] = self.unsaved.get(key, 0) + n

    def save(self, db: sqlite3.Connection, txn: Txn) -> None:
        """Inside the transaction: its eviction counts (and any unsaved ones) and the tally."""
        changed = [(n, TALLY_NAMES[lane]) for lane, n in enumerate(txn.depth) if n]
        if changed:
            db.executemany(TALLY_ADD, changed)
        if not txn.evicted and not self.unsaved:
            return
        counts = dict(txn.evicted)
        for key, n in self.unsaved.items():
            counts[key] = counts.get(key, 0) + n
        txn.saved_unsaved = True
        if counts:
            db.executemany(
                COUNT_EVICTED, [(lane, reason, n) for (lane, reason), n in counts.items()]
            )

    def apply(self, txn: Txn) -> None:
        """After the transaction `txn` was saved in committed."""
        depth = self.depth
        for lane in range(3):
            depth[lane] += txn.depth[lane]
        self.bytes += txn.bytes
        evicted = self.evicted
        if txn.saved_unsaved:
            for key, n in self.unsaved.items():
                evicted[key] = evicted.get(key, 0) + n
            self.unsaved.clear()
        for key, n in txn.evicted.items():
            evicted[key] = evicted.get(key, 0) + n

    def count_rows(self, db: sqlite3.Connection) -> bool:
        """Depth and bytes per lane from the rows, in one pass; True when some row has a lane
        or timestamp that is not one (a damaged column: never taken, or breaking the age)."""
        self.depth = [0, 0, 0]
        self.bytes = 0
        strays = False
        for lane, n, size, bad_ts in db.execute(sql.COUNT_ROWS):
            if type(lane) is not int or not 0 <= lane <= 2:
                strays = True
                continue
            strays = strays or bad_ts > 0
            self.depth[lane] = n
            self.bytes += size + n * ROW_OVERHEAD
        return strays

    def load_evictions(self, db: sqlite3.Connection) -> None:
        """The eviction history as the file holds it (after a recount)."""
        self.evicted = {
            (lane, reason): n for lane, reason, n in db.execute(sql.EVICTIONS) if lane in (0, 1, 2)
        }

    def repair_tally(self, db: sqlite3.Connection) -> None:
        """Rewrite a tally that disagrees with the rows (an older file, another writer)."""
        tally = dict(db.execute(sql.TALLY_READ, TALLY_NAMES).fetchall())
        if [tally.get(name) for name in TALLY_NAMES] != self.depth:
            with contextlib.suppress(sqlite3.Error):  # best effort: a full disk, say
                db.execute("BEGIN IMMEDIATE")
                db.execute(sql.TALLY_DELETE, TALLY_NAMES)
                db.executemany(sql.TALLY_INSERT, zip(TALLY_NAMES, self.depth, strict=True))
                db.execute("COMMIT")
            if db.in_transaction:
                db.execute("ROLLBACK")

    def carry_over(self) -> list[int]:
        """The file is being replaced: its eviction history, known here exactly, goes on in the
        fresh file (as unsaved); depth and bytes start at 0. Returns the depth before."""
        known = list(self.depth)
        for key, n in self.evicted.items():
            self.unsaved[key] = self.unsaved.get(key, 0) + n
        self.evicted = {}
        self.depth = [0, 0, 0]
        self.bytes = 0
        return known

    def evicted_by_name(self) -> dict[str, int]:
        """Every count, saved or not, by "<lane>/<reason>"."""
        out: dict[str, int] = {}
        for counts in (self.evicted, self.unsaved):
            for (lane, reason), n in counts.items():
                key = f"{LANE_NAMES[lane]}/{reason}"
                out[key] = out.get(key, 0) + n
        return out
