"""What leaves the buffer without an ack: the size bound (max_bytes, the free disk, a full disk),
the declared order of eviction under it, and expiry by age.

Invariants:
- every function here runs inside a transaction the Store opened and records what it deleted in
  that transaction's Txn (counted under "<lane>/<reason>"); it never commits, and it reads the
  in-memory accounting, never changes it (the Store applies the Txn after COMMIT);
- eviction takes the oldest telemetry first (records not in flight before those in flight),
  events only when no telemetry is left, alarms only when nothing else is left, incoming records
  included in that order (an incoming record is dropped only when nothing older of its lane is
  left);
- expiry drops only telemetry not in flight, with a plausible stamp older than max_age_s;
- the bound is never above max_bytes; below it only while the file system is short of space.

Disk space: the bound is recomputed at every space check (once a second, or per 512 KiB stored)
from the real free space: the file system's free space above RESERVE_BYTES plus the free pages
inside the file (which new records reuse). So eviction brings the buffer to a steady size rather
than ratcheting it down, and stops at the first check after space comes back. A file system with
less than the reserve free lowers the bound to what the file holds (stored and free pages), never
below: evicting records frees no disk (only the vacuum after a drain does), and pages the file
already has cost none, so the buffer keeps working in them instead of evicting every record at
the door. An SQLITE_FULL lowers the bound to 80% of what is stored, until the file system has
gained RESERVE_BYTES / 2 or DISK_FULL_HOLD_S passed.

Hours left (`Stats.hours_left`, the `buffer_hours_left` gauge): the bound above minus what is
stored, over the append rate of the last FILL_WINDOW_S: how long an outage starting now lasts
before the first eviction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from gatewayd.clock import PLAUSIBLE_MS
from gatewayd.reading import Lane

from . import sql
from .accounting import ROW_OVERHEAD, Accounting, Txn
from .sql import TELEMETRY

log = logging.getLogger("gatewayd.buffer")

# Evict a little more than needed, so a full buffer deletes in chunks, not a row per append.
EVICT_SLACK = 1 / 200
# A long-expired backlog goes in slices of this many rows: appends never wait long.
EXPIRE_SLICE = 20_000
# A bound learned from SQLITE_FULL is dropped after this long, or once the file system gained
# RESERVE_BYTES / 2, whichever comes first.
DISK_FULL_HOLD_S = 600.0
# How often the free space is looked at (also after every RESERVE_BYTES / 4 stored).
STATVFS_INTERVAL_S = 1.0
# Free space kept on the file system. A WAL holding pages that grow the file cannot be
# checkpointed into a full disk, and then not even a delete can commit: so the buffer stops
# growing (and evicts, reason disk_full) before the last bytes are gone, as if it were full.
RESERVE_BYTES = 2 << 20
FILL_WINDOW_S = 60.0  # the append rate behind hours_left is measured over this
_ORDER = (TELEMETRY, int(Lane.EVENT), int(Lane.ALARM))


class Bound:
    """The bytes the buffer may hold now, and the reason evictions under it count as."""

    def __init__(self, max_bytes: int, path: Path, acc: Accounting) -> None:
        self.max_bytes = max_bytes
        self.path = path  # for the logs
        self._dir = str(path.parent)
        self._acc = acc
        self.next_statvfs = 0.0  # monotonic time of the next space check
        self._statvfs_bytes = 0  # what was stored at the last one
        self._space_cap: int | None = None  # the bound the free space allows (None: no bound)
        self._full_cap: int | None = None  # the bound learned from SQLITE_FULL
        self._full_until = 0.0
        self._full_fs_free = 0
        self._disk_low = False
        self._fill_samples: list[tuple[float, int]] = []  # (monotonic, appended_bytes)

    def limit(self, db: sqlite3.Connection) -> tuple[int, str]:
        """The bound for this transaction and the reason evictions under it are counted as."""
        now = time.monotonic()
        stored = self._acc.bytes
        # A syscall per second, or per 512 KiB stored, is enough to see the disk filling.
        if now >= self.next_statvfs or stored - self._statvfs_bytes > RESERVE_BYTES // 4:
            self.next_statvfs = now + STATVFS_INTERVAL_S
            self._statvfs_bytes = stored
            self._check_space(db, now)
        limit, reason = self.max_bytes, "full"
        for cap in (self._space_cap, self._full_cap):
            if cap is not None and cap < limit:
                limit, reason = cap, "disk_full"
        return limit, reason

    def _check_space(self, db: sqlite3.Connection, now: float) -> None:
        """Recompute the bound the free space allows: what is stored, plus the free pages in the
        file, plus the file system's free space above the reserve. Eviction frees pages inside
        the file, so it does not lower this bound again; space freed on the disk raises it."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return
        fs_free = st.f_bavail * st.f_frsize
        if self._full_cap is not None and (
            now >= self._full_until or fs_free >= self._full_fs_free + RESERVE_BYTES // 2
        ):
            self._full_cap = None
            log.info("buffer_disk_full_cleared path=%s free=%d", self.path, fs_free)
        free_pages = db.execute(sql.FREELIST_COUNT).fetchone()[0]
        page_size = db.execute(sql.PAGE_SIZE).fetchone()[0]
        stored = self._acc.bytes
        bound = stored + free_pages * page_size + max(0, fs_free - RESERVE_BYTES)
        self._space_cap = bound if bound < self.max_bytes else None
        low = fs_free < 2 * RESERVE_BYTES
        if low and not self._disk_low:
            log.warning(
                "buffer_disk_low path=%s bytes=%d free=%d free_in_file=%d bound=%d",
                self.path,
                stored,
                fs_free,
                free_pages * page_size,
                bound,
            )
        elif self._disk_low and not low:
            log.info("buffer_disk_space_back path=%s free=%d", self.path, fs_free)
        self._disk_low = low

    def disk_full(self) -> None:
        """SQLite reported SQLITE_FULL: hold the bound at 80% of what is stored (see above)."""
        self._full_cap = int(self._acc.bytes * 0.8)
        self._full_until = time.monotonic() + DISK_FULL_HOLD_S
        with contextlib.suppress(OSError):
            st = os.statvfs(self._dir)
            self._full_fs_free = st.f_bavail * st.f_frsize

    def hours_left(self, db: sqlite3.Connection, appended_bytes: int) -> float:
        """Free bound ÷ the append rate over the last FILL_WINDOW_S (samples at most 1/s)."""
        now = time.monotonic()
        samples = self._fill_samples
        if not samples or now - samples[-1][0] >= 1.0:
            samples.append((now, appended_bytes))
        while len(samples) > 2 and now - samples[1][0] >= FILL_WINDOW_S:
            samples.pop(0)
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        rate = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        if rate <= 0:
            return float("inf")
        return max(0, self.limit(db)[0] - self._acc.bytes) / rate / 3600


class Evictor:
    """Eviction under the bound in the declared order, and expiry by age, inside a transaction.
    `cursor` is the Store's per-lane take cursor: records at or below it are in flight."""

    def __init__(
        self, acc: Accounting, bound: Bound, max_age_s: float | None, now: Callable[[], int]
    ) -> None:
        self._acc = acc
        self.bound = bound
        self.max_age_s = max_age_s
        self._now = now
        # Monotonic: `take` expires (in a transaction of its own) when this has passed; every
        # append expires in its own transaction.
        self.next_expiry = 0.0

    def make_room(
        self,
        db: sqlite3.Connection,
        cursor: list[int],
        rows: Sequence[tuple[int, int, str]],
        incoming: int,
        txn: Txn,
    ) -> set[int]:
        """Evict so that `rows` fit under the bound; returns the positions of rows not kept.

        Lane order holds with the incoming rows in it: a stored record is evicted only for an
        incoming one of its lane or a higher one. Once every incoming row of this lane and the
        lower ones is dropped, nothing of a higher lane goes for them (a bound lowered below what
        is stored, after a full disk, drops the incoming telemetry, not the stored alarms)."""
        limit, reason = self.bound.limit(db)
        excess = self._acc.bytes + txn.bytes + incoming - limit
        dropped: set[int] = set()
        if excess <= 0:
            return dropped
        slack = int(limit * EVICT_SLACK)  # only for stored records, never for incoming ones
        excess += slack
        # The highest lane (lowest number) among the incoming rows: nothing above it is evicted.
        top = min((r[0] for r in rows), default=None)
        for lane in _ORDER:
            if top is not None and lane < top:
                return dropped
            need = excess if lane == TELEMETRY else excess - slack
            excess -= self._evict_oldest(db, cursor[lane], lane, need, reason, txn)
            if excess <= slack:
                return dropped
            # Nothing older is left in this lane: the incoming records of the lane go next.
            for i, r in enumerate(rows):
                if r[0] == lane and excess > slack:
                    excess -= len(r[2]) + ROW_OVERHEAD
                    dropped.add(i)
                    key = (lane, reason)
                    txn.evicted[key] = txn.evicted.get(key, 0) + 1
            if excess <= slack:
                return dropped
        return dropped

    def _evict_oldest(
        self, db: sqlite3.Connection, cursor: int, lane: int, need: int, reason: str, txn: Txn
    ) -> int:
        """Delete a lane's oldest records (not in flight first) until `need` bytes are freed."""
        freed = 0
        for span in (sql.AFTER_CURSOR, sql.UP_TO_CURSOR):
            if freed >= need or self._acc.depth[lane] + txn.depth[lane] == 0:
                break
            q = db.execute(sql.EVICT_SCAN[lane, span], (lane, cursor))
            n = 0
            size = 0
            last = None
            ids = []
            for rid, length in q:
                n += 1
                size += length + ROW_OVERHEAD
                last = rid
                if span is sql.UP_TO_CURSOR:
                    ids.append(rid)
                if freed + size >= need:
                    break
            q.close()
            if last is None:
                continue
            db.execute(sql.EVICT_DELETE[lane, span], (lane, cursor, last))
            txn.evict(lane, reason, n, size)
            txn.uncursored.extend(ids)
            freed += size
        return freed

    def expire(self, db: sqlite3.Connection, cursor: list[int], txn: Txn) -> None:
        """Drop telemetry older than max_age_s (by its own timestamp), oldest first, counted.
        Looks at the oldest rows only: one short query per transaction when nothing is due.
        Age expiry waits for a plausible clock: a Pi without RTC boots in the past (see
        OPS.md); a row stamped before it has no age until `restamp` corrects it."""
        if self.max_age_s is None:
            return
        self.next_expiry = time.monotonic() + 1.0
        now = self._now()
        if now < PLAUSIBLE_MS or self._acc.depth[TELEMETRY] == 0:
            return
        cutoff = now - self.max_age_s * 1000
        after = cursor[TELEMETRY]
        q = db.execute(sql.EXPIRE_SCAN, (TELEMETRY, after, EXPIRE_SLICE))
        n = size = 0
        last = None
        for rid, ts, length in q:
            if ts >= cutoff:
                break
            if ts < PLAUSIBLE_MS:  # stamped before the clock was set: no age
                continue
            n += 1
            size += length + ROW_OVERHEAD
            last = rid
        q.close()
        if last is not None:
            db.execute(sql.EXPIRE_DELETE, (TELEMETRY, after, last, PLAUSIBLE_MS))
            txn.evict(TELEMETRY, "age", n, size)
