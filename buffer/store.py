"""The synchronous SQLite outbox. One thread owns a Store; `Buffer` is its asyncio face.

Invariants:
- `append` returns after one transaction committed its records (and any evictions they caused);
  it never raises for a full buffer, a full disk or a corrupt file: what it could not keep is
  counted in `evicted` under "<lane>/<reason>" and gets id 0;
- `take` returns only records whose body is valid UTF-8 and a JSON object that starts with its
  "point" member and has no "id", so the uplink's splice of `{"id":N,` before it always parses
  to the right id; a record that fails this is moved to `damaged` and counted
  ("<lane>/damaged"), and never blocks the others;
- a record leaves the file only through `ack` or a counted eviction; eviction takes the oldest
  telemetry first (records not in flight before those in flight), events only when no telemetry
  is left, alarms only when nothing else is left, incoming records included in that order;
- ids never repeat on a gateway (see lifecycle.py: "Ids");
- the in-memory accounting (depth per lane, bytes, eviction counts: see accounting.py) is exact:
  every transaction here collects its changes in a Txn that is applied only after its COMMIT,
  and a commit by another connection (the `gatewayd buffer` CLI) is noticed through
  `data_version` and recounted.

The Store keeps the transactions (append, take, ack, set-aside, expiry, restamp) and composes
collaborators that never import it (the Store owns the connection and the take cursor, and hands
them to each call, so a file replaced while running leaves no stale reference behind):
- sql.py: the schema, the pragmas, every statement (on-disk layout: WAL; freed pages are reused,
  and given back by VACUUM after a drain);
- lifecycle.py (BufferFile): opening, quick check, quarantine and salvage of a corrupt file, id
  seeding, permissions, vacuum;
- accounting.py (Accounting, Txn): the exact counts, the tally and the eviction totals, written
  in the same transaction as the deletes, so after a crash the counts still match the data;
- eviction.py (Bound, Evictor): the size bound from max_bytes and the free disk, a full disk,
  the order of eviction, expiry by age, hours left.
`damaged` keeps the latest DAMAGED_KEEP records set aside by `take`, as found, for inspection
(`gatewayd buffer stats` counts them).

Tally: the number of live records per lane is kept in `sqlite_sequence` (rows "records.lane0..2"
beside the id sequence, whose page every insert writes anyway), updated in the transaction that
changes it (Accounting.save). When a file is found corrupt it is what tells how many records
could not be salvaged.

Eviction reasons ("<lane>/<reason>"): full (max_bytes), disk_full (the file system filled up, or
less than eviction.RESERVE_BYTES is free), age (telemetry older than max_age_s), corrupt (the
records of a corrupt file that could not be salvaged), damaged (a record that cannot be sent, see
`take`), error (an append no write could store), purged (the CLI).

In flight: `take` moves a per-lane cursor in memory only; after a crash everything not acked is
taken again. `nack(ids)` moves a lane's cursor back before the first nacked id.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple, cast

from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record, now_ms

from . import sql
from .accounting import LANE_NAMES, ROW_OVERHEAD, Accounting, Txn
from .codec import decode_body, encode_bodies
from .eviction import Bound, Evictor
from .lifecycle import BufferFile, file_bytes, is_corrupt, maybe_vacuum, sqlite_code
from .sql import DATA_VERSION, SEQ, TELEMETRY, ids_in, insert

log = logging.getLogger("gatewayd.buffer")

# Damaged records kept for inspection (all are counted; only the latest are kept).
DAMAGED_KEEP = 1000


class DiskFull(Exception):
    """SQLite reported SQLITE_FULL (disk full or max_page_count reached)."""


class Entry(NamedTuple):
    """A stored record as taken: a tuple, so a backlog drains without per-row object set-up."""

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
    file_bytes: int = 0  # the database file plus its WAL
    inflight: int = 0
    quarantined: int = 0  # corrupt files moved aside by this process
    salvaged: int = 0  # records copied out of those files into the fresh one
    incarnation: int = 0
    # Hours until the bound (max_bytes or the free disk) is reached at the current append rate
    # with nothing delivered, i.e. how long an outage starting now can last without eviction;
    # inf while nothing is being appended.
    hours_left: float = float("inf")


class Store:
    def __init__(
        self, path: str | Path, cfg: BufferConfig, now: Callable[[], int] = now_ms
    ) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self._now = now
        self._file = BufferFile(self.path, cfg.sync)
        self._cursor = [0, 0, 0]
        self._inflight: dict[int, int] = {}  # taken id -> len(body) << 2 | lane
        self._acc = Accounting()
        self._bound = Bound(cfg.max_bytes, self.path, self._acc)
        self._evictor = Evictor(self._acc, self._bound, cfg.max_age_s, now)
        self.appended = 0
        self.acked = 0
        self.drained = False  # the last take left nothing behind (see `_take`)
        self.appended_bytes = 0  # the fill rate's measure (body + ROW_OVERHEAD per record)
        self._db, moved = self._file.open()
        if moved is not None:
            self._salvage(moved, None)
        self._recount()

    @property
    def quarantined(self) -> list[Path]:
        return self._file.quarantined

    @property
    def incarnation(self) -> int:
        return self._file.incarnation

    # -- opening -------------------------------------------------------------------------------

    def _salvage(self, moved: Path, known: list[int] | None) -> None:
        """Copy what can be read of a quarantined file into this one; count the rest."""
        for key, n in self._file.salvage(self._db, moved, known).items():
            self._acc.lost(key, n)
        self._flush_unsaved()

    def _flush_unsaved(self) -> None:
        """Write counts kept only in memory (best effort: else the next transaction does)."""
        txn = Txn()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._acc.save(self._db, txn)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            return
        self._acc.apply(txn)

    def _recount(self) -> None:
        """Rebuild the in-memory accounting from the file (at start, or after another writer);
        a tally that disagrees with the rows (an older file, another writer) is rewritten."""
        db = self._db
        acc = self._acc
        self.drained = False  # another writer may have changed what is after the cursors
        if acc.count_rows(db):
            self._set_aside_strays()
            acc.count_rows(db)
        acc.load_evictions(db)
        self._keep_inflight()
        acc.repair_tally(db)
        self._version = db.execute(sql.DATA_VERSION).fetchone()[0]

    def _keep_inflight(self) -> None:
        """After another writer: keep the in-flight records that are still there, with their
        sizes as they are now (so `nack` still finds them and `ack` counts the right bytes)."""
        ids = list(self._inflight)
        self._inflight = {}
        for chunk in _chunks(ids, 500):
            for rid, lane, length in self._db.execute(ids_in(sql.SIZES_OF_IDS, len(chunk)), chunk):
                if type(lane) is int and 0 <= lane <= 2:
                    self._inflight[rid] = length << 2 | lane

    def _uncursor(self, ids: list[int]) -> None:
        """Evicted records are no longer in flight (an ack of theirs finds nothing)."""
        pop = self._inflight.pop
        for rid in ids:
            pop(rid, None)

    def _set_aside_strays(self) -> None:
        """Rows with a damaged lane or timestamp go to `damaged`, counted under their lane
        (telemetry when the lane itself is unreadable)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            counts = db.execute(sql.STRAY_COUNTS).fetchall()
            self._move_damaged(sql.STRAYS, (), "columns")
            db.executemany(sql.COUNT_DAMAGED, counts)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("buffer_set_aside_failed error=%s", exc)
            return
        log.error(
            "buffer_damaged_records path=%s n=%d problem=columns",
            self.path,
            sum(n for _, n in counts),
        )

    def _move_damaged(self, where: str, args: Sequence[object], problem: str) -> int:
        """Inside a transaction: move the records matching `where` to `damaged`; how many."""
        db = self._db
        db.execute(sql.COPY_DAMAGED.format(where), (problem, self._now(), *args))
        n = db.execute(sql.DELETE_WHERE.format(where), args).rowcount
        (kept,) = db.execute(sql.DAMAGED_COUNT).fetchone()
        if kept > DAMAGED_KEEP:
            db.execute(sql.DAMAGED_TRIM, (kept - DAMAGED_KEEP,))
        return int(n)

    def _sync_external(self) -> None:
        v = self._db.execute(DATA_VERSION).fetchone()[0]
        if v != self._version:
            log.info("buffer_changed_externally path=%s", self.path)
            self._recount()

    # -- append --------------------------------------------------------------------------------

    def append(self, records: Sequence[Record], acks: Sequence[int] = ()) -> list[int]:
        """Commit records in one transaction; their ids in order (0: not kept, counted).
        `acks` are acknowledged first, in the same transaction when they can be (see
        `append_take`)."""
        return self.append_take(records, acks, None)[0]

    def append_take(
        self, records: Sequence[Record], acks: Sequence[int], take: tuple[int, int] | None
    ) -> tuple[list[int], list[Entry]]:
        """`ack(acks)`, then `append(records)`, then `take(*take)` when the last take left
        nothing behind (else no take: []): one transaction for the ack and the append when every
        acked id is in flight here (else the ack has its own, as `ack` does), and the take hands
        out the records just committed without reading them back (they are exactly what it would
        read: the only records after the cursors, with bodies `encode_body` made sendable)."""
        self._sync_external()
        if acks and (not records or any(i not in self._inflight for i in acks)):
            self.ack(acks)  # nothing to share it with, or ids not taken here: the general path
            acks = ()
        if not records:
            return [], []
        was_drained = self.drained  # still true at the end unless a cursor moved (rewind...)
        bodies = encode_bodies(records)
        lanes = [int(r.lane) for r in records]  # sqlite3 binds an exact int faster than an IntEnum
        rows = list(zip(lanes, [r.ts_ms for r in records], bodies, strict=True))
        incoming = sum(map(len, bodies)) + ROW_OVERHEAD * len(bodies)
        ids: list[int] | None = None
        if acks:
            pop = self._inflight.pop
            popped = {i: pop(i) for i in acks if i in self._inflight}
            try:
                first, dropped = self._append_txn(rows, incoming, popped)
            except Exception:  # the ack alone (with its own handling), then the append alone
                self._inflight.update(popped)
                self.ack(list(popped))
            else:
                self.acked += len(popped)
                self.appended += len(rows) - len(dropped)
                self.appended_bytes += incoming
                ids = self._ids_with_gaps(len(rows), first, dropped, set())
        if ids is None:
            ids = self._append_rows(rows, incoming)
        drained = was_drained and self.drained
        self.drained = False  # records are after the cursors now, until a take hands them out
        if take is None or not drained:
            return ids, []
        if 0 in ids:  # some were not kept: read back what was
            return ids, self.take(*take)
        return ids, self._hand_out_fresh(ids[0], rows, take)

    def _append_rows(self, rows: list[tuple[int, int, str]], incoming: int) -> list[int]:
        reason = "disk_full"
        shed: set[int] = set()  # positions the disk-full shrink evicted before they were written
        todo = rows
        for attempt in range(4):
            try:
                first, dropped = self._append_txn(todo, incoming)
            except DiskFull:
                gone = self._shrink_for_disk_full(attempt, todo, incoming)
                if gone is None:
                    break
                if gone:
                    left = [i for i in range(len(rows)) if i not in shed]
                    shed.update(left[j] for j in gone)
                    todo = [r for i, r in enumerate(rows) if i not in shed]
                    incoming = sum(len(r[2]) + ROW_OVERHEAD for r in todo)
                    if not todo:
                        return [0] * len(rows)
                continue
            except sqlite3.DatabaseError as exc:
                if not self._replace_if_corrupt(exc):
                    log.error("buffer_append_failed path=%s error=%s", self.path, exc)
                    reason = "error"
                    break
                continue
            self.appended += len(todo) - len(dropped)
            self.appended_bytes += incoming
            return self._ids_with_gaps(len(rows), first, dropped, shed)
        # Nothing could be written: the records are lost, and counted (the shed ones already are).
        for lane, _, _ in todo:
            key = (int(lane), reason)
            self._acc.lost(key, 1)
        return [0] * len(rows)

    @staticmethod
    def _ids_with_gaps(n: int, first: int, dropped: set[int], shed: set[int]) -> list[int]:
        """The ids of n rows of which `shed` (positions in all rows) were evicted before the
        transaction and `dropped` (positions among the others) in it: 0 for those."""
        if not dropped and not shed:
            return list(range(first, first + n))
        ids = []
        j = 0  # position among the rows written
        for i in range(n):
            if i in shed:
                ids.append(0)
                continue
            ids.append(0 if j in dropped else first)
            first += j not in dropped
            j += 1
        return ids

    def _append_txn(
        self,
        rows: Sequence[tuple[int, int, str]],
        incoming: int,
        acked: dict[int, int] | None = None,
    ) -> tuple[int, set[int]]:
        """One transaction: delete `acked` (popped from the in-flight map), expire, make room,
        insert. (first id, positions not kept)."""
        db = self._db
        acc = self._acc
        evictor = self._evictor
        cursor = self._cursor
        txn = Txn()
        db.execute("BEGIN IMMEDIATE")
        try:
            if acked:
                self._delete_acked(acked, txn)  # before make_room: their bytes count as free
            evictor.expire(db, cursor, txn)
            dropped = evictor.make_room(db, cursor, rows, incoming, txn)
            kept = [r for i, r in enumerate(rows) if i not in dropped] if dropped else rows
            # AUTOINCREMENT numbers one transaction's rows consecutively up to the last one.
            seq = insert(db, kept)
            if seq is None:
                (seq,) = db.execute(SEQ).fetchone()
            if dropped:
                for lane, _, body in kept:
                    txn.depth[lane] += 1
                    txn.bytes += len(body) + ROW_OVERHEAD
            else:
                lanes = [r[0] for r in rows]
                alarms, events = lanes.count(0), lanes.count(1)
                txn.depth[0] += alarms
                txn.depth[1] += events
                txn.depth[2] += len(rows) - alarms - events
                txn.bytes += incoming
            acc.save(db, txn)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if sqlite_code(exc) == sqlite3.SQLITE_FULL:
                raise DiskFull() from exc
            raise
        acc.apply(txn)
        if txn.uncursored:
            self._uncursor(txn.uncursored)
        return seq - len(kept) + 1, dropped

    def _shrink_for_disk_full(
        self, attempt: int, rows: Sequence[tuple[int, int, str]], incoming: int
    ) -> set[int] | None:
        """After SQLITE_FULL: lower the bound below what is stored now, make room under it for
        the incoming `rows` in a transaction of its own (deletes need little new space), and
        checkpoint so the WAL gives its space back. The incoming rows take their place in the
        eviction order: an alarm is never evicted to store telemetry, which goes first instead.
        Returns the positions of `rows` evicted (counted) before they were written, or None when
        nothing more can be done for this append."""
        if attempt == 0:
            log.warning("buffer_disk_full path=%s bytes=%d", self.path, self._acc.bytes)
        gone: set[int] = set()
        if sum(self._acc.depth) > 0:
            self._bound.disk_full()
            txn = Txn()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                gone = self._evictor.make_room(db, self._cursor, rows, incoming, txn)
                self._acc.save(db, txn)
                db.execute("COMMIT")
                self._acc.apply(txn)
                self._uncursor(txn.uncursored)
            except sqlite3.Error:
                gone = set()
                if db.in_transaction:
                    db.execute("ROLLBACK")
        elif attempt > 0:
            return None
        with contextlib.suppress(sqlite3.Error):
            self._db.execute(sql.CHECKPOINT_TRUNCATE).fetchall()
        return gone

    def _replace_if_corrupt(self, exc: sqlite3.DatabaseError) -> bool:
        """A file found corrupt while running is moved aside and replaced; what can be read of it
        is salvaged, the rest counted as lost ("<lane>/corrupt"). False for any other error."""
        if not is_corrupt(exc):
            return False
        known = self._acc.carry_over()
        self._db, moved = self._file.replace(self._db, str(exc))
        self._cursor = [0, 0, 0]
        self._inflight.clear()
        self._salvage(moved, known)
        self._recount()
        return True

    # -- take / ack / nack ---------------------------------------------------------------------

    def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        """The next records not in flight, highest-priority lane first, in id order. Never
        raises for the file: a corrupt one is replaced, other errors give [] (try again)."""
        self.drained = False
        try:
            return self._take(max_records, max_bytes)
        except sqlite3.DatabaseError as exc:
            if not self._replace_if_corrupt(exc):
                log.warning("buffer_take_failed path=%s error=%s", self.path, exc)
            return []

    def _take(self, max_records: int, max_bytes: int) -> list[Entry]:
        self._sync_external()
        evictor = self._evictor
        if evictor.max_age_s is not None and time.monotonic() >= evictor.next_expiry:
            self._expire_now()
        out = self._hand_out(self._sendable, max_records, max_bytes)
        if not out:  # idle: a moment to give a drained outage's space back
            maybe_vacuum(self._db, self._acc.bytes)
        return out

    def _hand_out_fresh(
        self, first: int, rows: list[tuple[int, int, str]], take: tuple[int, int]
    ) -> list[Entry]:
        """The take right after an append that followed a drained take: the appended rows
        (consecutive ids from `first`) are the only records after the cursors."""
        if all(r[0] == TELEMETRY for r in rows):
            fresh = {TELEMETRY: [(first + i, TELEMETRY, r[2]) for i, r in enumerate(rows)]}
        else:
            fresh = {0: [], 1: [], 2: []}
            for i, (lane, _, body) in enumerate(rows):
                fresh[lane].append((first + i, lane, body))
        return self._hand_out(lambda lane, want: fresh.get(lane, [])[:want], take[0], take[1])

    def _hand_out(
        self,
        rows_of: Callable[[int, int], list[tuple[int, int, str]]],
        max_records: int,
        max_bytes: int,
    ) -> list[Entry]:
        """Lane by lane, the next records `rows_of(lane, want)` gives, within the limits; they
        are in flight from now on."""
        out: list[Entry] = []
        size = 0
        inflight = self._inflight
        depth = self._acc.depth
        make = partial(tuple.__new__, Entry)  # a C-level Entry from a row tuple
        for lane in (0, 1, 2):
            want = max_records - len(out)
            if want <= 0:
                break
            if depth[lane] == 0:
                continue
            rows = rows_of(lane, want)
            if not rows:
                continue
            lens = [len(r[2]) for r in rows]
            total = sum(lens)
            full = size + total > max_bytes
            if full:  # cut where the batch would exceed max_bytes (it holds at least one record)
                cut = 0
                for n in lens:
                    if (out or cut) and size + n > max_bytes:
                        break
                    size += n
                    cut += 1
                rows, lens = rows[:cut], lens[:cut]
            else:
                size += total
            if rows:
                inflight.update(
                    zip([r[0] for r in rows], [n << 2 | lane for n in lens], strict=True)
                )
                self._cursor[lane] = rows[-1][0]
                out.extend(map(make, rows))
            if full:
                return out
        # Every lane gave fewer than it was asked for: nothing is left to take (until an append,
        # a nack or a rewind). A take that stopped at max_records or max_bytes returned above.
        self.drained = len(out) < max_records
        return out

    def _sendable(self, lane: int, want: int) -> list[tuple[int, int, str]]:
        """The lane's next `want` records after its cursor, each one that `take` may hand out;
        the others are moved to `damaged` first (counted), so they never block the lane."""
        db = self._db
        after = self._cursor[lane]
        select = sql.TAKE[lane]
        # Each round sets at least one record aside (else it returns or raises), so this ends.
        # No bound by `want`: a round finds one kind of damage (UTF-8, then JSON) in a window of
        # `want` rows, so a run of damaged records may take more rounds than `want`, and giving
        # up early would skip to a lower lane (or report the lane drained) with records left.
        while True:
            try:
                rows: list[tuple[int, int, str]] = db.execute(
                    select, (lane, after, want)
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if sqlite_code(exc):  # an SQLite error, not Python's UTF-8 decoding
                    raise
                bad = self._undecodable(lane, after, want)
                if not bad:
                    raise
                self._set_aside(lane, bad, "utf8")
                continue
            if not rows:
                return rows
            # The common case costs one more pass over pages just read, all inside SQLite.
            bad = [r[0] for r in db.execute(sql.UNSENDABLE[lane], (lane, after, rows[-1][0]))]
            if not bad:
                return rows
            self._set_aside(lane, bad, "json")  # then read again: a full batch if there is one

    def _undecodable(self, lane: int, after: int, want: int) -> list[int]:
        """Ids among the lane's next `want` records whose body is not valid UTF-8."""
        bad = []
        for rid, body in self._db.execute(sql.TAKE_BYTES[lane], (lane, after, want)):
            try:
                body.decode()
            except (UnicodeDecodeError, AttributeError):
                bad.append(rid)
        return bad

    def _set_aside(self, lane: int, ids: list[int], problem: str) -> None:
        """Move records that cannot be sent to `damaged`, counted "<lane>/damaged"."""
        db = self._db
        txn = Txn()
        db.execute("BEGIN IMMEDIATE")
        try:
            (size,) = db.execute(ids_in(sql.BODY_CHARS_OF_IDS, len(ids)), ids).fetchone()
            n = self._move_damaged(ids_in("id IN ({})", len(ids)), ids, problem)
            txn.evict(lane, "damaged", n, size + n * ROW_OVERHEAD)
            self._acc.save(db, txn)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._acc.apply(txn)
        log.error(
            "buffer_damaged_records path=%s lane=%s n=%d problem=%s first_id=%d",
            self.path,
            LANE_NAMES[lane],
            n,
            problem,
            ids[0],
        )

    def _expire_now(self) -> None:
        txn = Txn()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            self._evictor.expire(db, self._cursor, txn)
            self._acc.save(db, txn)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("buffer_expiry_failed error=%s", exc)
            return
        self._acc.apply(txn)

    def restamp(self, before_ms: int, delta_ms: int) -> int:
        """Move every stamp earlier than `before_ms` by `delta_ms` (stamps taken before the
        clock was set, once it is: see gatewayd.clock), in the column and in the body.
        Returns how many rows moved."""
        # One statement: atomic on its own.
        cur = self._db.execute(sql.RESTAMP, (delta_ms, before_ms))
        return cur.rowcount

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged records; unknown ids (already acked or evicted) are ignored."""
        self._sync_external()
        ids = list(ids)
        if not ids:
            return 0
        inflight = self._inflight
        pop = inflight.pop
        vals = [pop(i, None) for i in ids]
        if None in vals:  # some were not taken by this process (after a rewind or restart)
            known = [i for i, v in zip(ids, vals, strict=True) if v is not None]
            unknown = [i for i, v in zip(ids, vals, strict=True) if v is None]
            popped = {i: v for i, v in zip(ids, vals, strict=True) if v is not None}
        else:
            known, unknown = ids, []
            popped = dict(zip(ids, cast("list[int]", vals), strict=True))
        db = self._db
        txn = Txn()
        try:
            db.execute("BEGIN IMMEDIATE")
            self._delete_acked(popped, txn)
            # Ids not taken by this process (after a rewind or restart): sizes from the rows.
            for chunk in _chunks(unknown, 500):
                for lane, length in db.execute(
                    ids_in(sql.DELETE_IDS_RETURNING, len(chunk)), chunk
                ).fetchall():
                    txn.depth[lane] -= 1
                    txn.bytes -= length + ROW_OVERHEAD
            self._acc.save(db, txn)
            db.execute("COMMIT")
        except _Recount:
            db.execute("ROLLBACK")
            self._recount()
            return self.ack(known + unknown)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError) and self._replace_if_corrupt(exc):
                return 0
            inflight.update(popped)
            # The records stay and are sent again later: a duplicate, never a loss.
            log.warning("buffer_ack_failed n=%d error=%s", len(known) + len(unknown), exc)
            return 0
        self._acc.apply(txn)
        n = -sum(txn.depth)
        self.acked += n
        return n

    def _delete_acked(self, popped: dict[int, int], txn: Txn) -> None:
        """Inside a transaction: delete the acked records `popped` from the in-flight map
        (id -> size << 2 | lane), and count them in `txn`."""
        db = self._db
        before = db.total_changes
        if popped:
            lo, hi = min(popped), max(popped)
            if hi - lo + 1 == len(popped):  # distinct ids filling [lo, hi]: exactly that range
                db.execute(sql.DELETE_RANGE, (lo, hi))
            else:
                for chunk in _chunks(list(popped), 500):
                    db.execute(ids_in(sql.DELETE_IDS, len(chunk)), chunk)
        if db.total_changes - before != len(popped):  # cannot happen without another writer
            raise _Recount()
        lanes = [v & 3 for v in popped.values()]
        alarms, events = lanes.count(0), lanes.count(1)
        txn.depth[0] -= alarms
        txn.depth[1] -= events
        txn.depth[2] -= len(lanes) - alarms - events
        txn.bytes -= sum([v >> 2 for v in popped.values()]) + ROW_OVERHEAD * len(lanes)

    def nack(self, ids: Iterable[int]) -> None:
        """Give taken records back: each nacked id and whatever its lane took after it is taken
        again by the next `take` (so order within a lane is kept)."""
        first = [0, 0, 0]
        for i in ids:
            v = self._inflight.get(i)
            if v is not None:
                lane = v & 3
                first[lane] = i if first[lane] == 0 else min(first[lane], i)
        for lane in range(3):
            if first[lane] and first[lane] <= self._cursor[lane]:
                self._cursor[lane] = first[lane] - 1
                self.drained = False

    def rewind(self) -> None:
        """Forget what is in flight: the next take starts again at the oldest unacked record."""
        self._cursor = [0, 0, 0]
        self.drained = False

    # -- inspection ----------------------------------------------------------------------------

    def snapshot(self) -> Stats:
        self._sync_external()
        oldest = None
        for lane in (0, 1, 2):
            if self._acc.depth[lane]:
                row = self._db.execute(sql.OLDEST_TS[lane], (lane,)).fetchone()
                if row is not None and (oldest is None or row[0] < oldest):
                    oldest = row[0]
        depth = self._acc.depth
        return Stats(
            depth=sum(depth),
            bytes=self._acc.bytes,
            oldest_ts_ms=oldest,
            depth_by_lane={LANE_NAMES[lane]: n for lane, n in enumerate(depth) if n},
            evicted=self._acc.evicted_by_name(),
            appended=self.appended,
            acked=self.acked,
            file_bytes=file_bytes(self.path),
            inflight=len(self._inflight),
            quarantined=len(self._file.quarantined),
            salvaged=self._file.salvaged,
            incarnation=self._file.incarnation,
            hours_left=self._bound.hours_left(self._db, self.appended_bytes),
        )

    def peek(self, n: int, lane: Lane | None = None) -> list[Entry]:
        return peek(self._db, n, lane)

    def close(self) -> None:
        self._db.close()


class _Recount(Exception):
    pass


def peek(db: sqlite3.Connection, n: int, lane: Lane | None = None) -> list[Entry]:
    """The first `n` records in delivery order (or of one lane)."""
    out: list[Entry] = []
    for la in Lane if lane is None else (lane,):
        if len(out) >= n:
            break
        q = db.execute(sql.PEEK[int(la)], (int(la), n - len(out)))
        out.extend(Entry(i, int(la), b) for i, b in q)
    return out


def _chunks(seq: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
