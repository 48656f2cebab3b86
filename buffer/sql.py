"""The buffer file's schema, its connection settings, and every statement the Store runs.

Invariants:
- this module imports nothing of the buffer: the other modules take their SQL from here;
- a statement is one fixed text (per lane, per row count), so it stays in the connection's
  statement cache; a text that takes a list of ids is built by `ids_in` from a template here;
- lane filters let SQLite use the rowid for telemetry and the partial index for the others;
- a change of SCHEMA, of the id layout (ID_BITS) or of the tally rows is a change of the on-disk
  format: bump BUFFER_FORMAT in gatewayd/lifecycle.

Layout (see store.py for what each part means to the transactions):
- `records(id INTEGER PRIMARY KEY AUTOINCREMENT, lane, ts_ms, body)`: `body` is the record's
  canonical JSON (see codec) without the id. Telemetry is taken and evicted by rowid order;
  alarms and events, which are few, have a partial index `(lane, id) WHERE lane < 2`, so a
  telemetry insert touches no index;
- `evictions(lane, reason, n)`: eviction totals since the file was created;
- `damaged(id, lane, ts_ms, body BLOB, problem, found_ms)`: records set aside by `take`;
- `sqlite_sequence`: the id sequence ("records", starting at `incarnation << ID_BITS`) and the
  tally of live records per lane (TALLY_NAMES).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain

from gatewayd.reading import Lane

# Ids: a file's sequence starts at incarnation << ID_BITS (see lifecycle: "Ids").
ID_BITS = 40
# How long a write waits for the CLI's short transactions.
BUSY_TIMEOUT_MS = 5000
# The live records per lane, kept beside the id sequence (whose page every insert writes anyway).
TALLY_NAMES = ("records.lane0", "records.lane1", "records.lane2")
TELEMETRY = int(Lane.TELEMETRY)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lane INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_priority ON records (lane, id) WHERE lane < 2;
CREATE TABLE IF NOT EXISTS evictions (
    lane INTEGER NOT NULL,
    reason TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (lane, reason)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS damaged (
    id INTEGER PRIMARY KEY,
    lane,
    ts_ms,
    body BLOB,
    problem TEXT NOT NULL,
    found_ms INTEGER NOT NULL
);
"""


def pragmas(sync: str) -> tuple[str, ...]:
    """The settings of the Store's connection, in order, for the `[buffer] sync` policy."""
    return (
        f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
        "PRAGMA journal_mode=WAL",
        f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}",
        # A small WAL: fewer pages to checkpoint at once, and less to reclaim on a full disk.
        "PRAGMA wal_autocheckpoint=256",
        f"PRAGMA journal_size_limit={2 << 20}",
    )


QUICK_CHECK = "PRAGMA quick_check(5)"
DATA_VERSION = "PRAGMA data_version"
FREELIST_COUNT = "PRAGMA freelist_count"
PAGE_COUNT = "PRAGMA page_count"
PAGE_SIZE = "PRAGMA page_size"
BUSY_NONE = "PRAGMA busy_timeout=0"
BUSY_DEFAULT = f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}"
CHECKPOINT_PASSIVE = "PRAGMA wal_checkpoint(PASSIVE)"
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"

# -- ids and tally -------------------------------------------------------------------------------

SEQ = "SELECT seq FROM sqlite_sequence WHERE name = 'records'"
SEED_SEQ = "INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)"
TALLY_ADD = "UPDATE sqlite_sequence SET seq = seq + ? WHERE name = ?"
TALLY_READ = "SELECT name, seq FROM sqlite_sequence WHERE name IN (?, ?, ?)"
TALLY_DELETE = "DELETE FROM sqlite_sequence WHERE name IN (?, ?, ?)"
TALLY_INSERT = "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)"

# -- insert --------------------------------------------------------------------------------------

# Rows go in multi-row INSERTs: one statement of n rows costs about a third of n executions of
# a one-row statement (AUTOINCREMENT writes its sequence once per statement). Power-of-two sizes
# keep the texts few, so they stay in the connection's statement cache.
INSERT_SIZES = (128, 64, 32, 16, 8, 4, 2, 1)
INSERTS = {
    n: "INSERT INTO records (lane, ts_ms, body) VALUES " + ", ".join(["(?, ?, ?)"] * n)
    for n in INSERT_SIZES
}
# A salvaged row keeps its id, and its body as stored (text, or the bytes of a damaged one).
INSERT_SALVAGED = (
    "INSERT OR IGNORE INTO records (id, lane, ts_ms, body) "
    "VALUES (?1, ?2, ?3, CASE WHEN ?5 THEN CAST(?4 AS TEXT) ELSE ?4 END)"
)


def insert(db: sqlite3.Connection, rows: Sequence[tuple[int, int, str]]) -> int | None:
    """Insert rows in order (their ids follow that order), a few statements for any count;
    the id of the last row (None when there were none)."""
    flat = list(chain.from_iterable(rows))
    at, left = 0, len(rows)
    last = None
    for size in INSERT_SIZES:
        while left >= size:
            last = db.execute(INSERTS[size], flat[at : at + 3 * size]).lastrowid
            at += 3 * size
            left -= size
    return last


# -- per lane ------------------------------------------------------------------------------------

# Lane filters that let SQLite use the rowid for telemetry and the partial index for the others.
LANE_WHERE = {
    int(lane): "lane = ?" if lane is Lane.TELEMETRY else "lane < 2 AND lane = ?" for lane in Lane
}
# A body `take` may hand out: valid UTF-8 (checked by decoding it), then this, in SQLite: a
# JSON object that starts with "point" and has no "id" of its own (the uplink puts it first).
SENDABLE = (
    "CASE WHEN typeof(body) = 'text' AND json_valid(body) "
    "THEN substr(body, 1, 9) = '{\"point\":' AND json_type(body, '$.id') IS NULL ELSE 0 END"
)
# (lane, after, limit): the lane's next records after its cursor.
TAKE = {
    lane: f"SELECT id, lane, body FROM records WHERE {where} AND id > ? ORDER BY id LIMIT ?"
    for lane, where in LANE_WHERE.items()
}
# (lane, after, last): ids among those that `take` may not hand out.
UNSENDABLE = {
    lane: f"SELECT id FROM records WHERE {where} AND id > ? AND id <= ? AND NOT ({SENDABLE})"
    for lane, where in LANE_WHERE.items()
}
# (lane, after, limit): the same records as TAKE, bodies as bytes (to find invalid UTF-8).
TAKE_BYTES = {
    lane: f"SELECT id, CAST(body AS BLOB) FROM records WHERE {where} AND id > ? ORDER BY id LIMIT ?"
    for lane, where in LANE_WHERE.items()
}
# (lane,): the oldest record's stamp.
OLDEST_TS = {
    lane: f"SELECT ts_ms FROM records WHERE {where} ORDER BY id LIMIT 1"
    for lane, where in LANE_WHERE.items()
}
# (lane, limit): the first records in delivery order.
PEEK = {
    lane: f"SELECT id, body FROM records WHERE {where} ORDER BY id LIMIT ?"
    for lane, where in LANE_WHERE.items()
}
# Eviction by size: first the records after the cursor (not in flight), then those up to it.
AFTER_CURSOR, UP_TO_CURSOR = "id > ?", "id <= ?"
# (lane, cursor): sizes in id order.
EVICT_SCAN = {
    (lane, span): f"SELECT id, LENGTH(body) FROM records WHERE {where} AND {span} ORDER BY id"
    for lane, where in LANE_WHERE.items()
    for span in (AFTER_CURSOR, UP_TO_CURSOR)
}
# (lane, cursor, last): delete the scanned records up to `last`.
EVICT_DELETE = {
    (lane, span): f"DELETE FROM records WHERE {where} AND {span} AND id <= ?"
    for lane, where in LANE_WHERE.items()
    for span in (AFTER_CURSOR, UP_TO_CURSOR)
}
# (lane, cursor, limit): telemetry not in flight, oldest first, with stamps.
EXPIRE_SCAN = (
    "SELECT id, ts_ms, LENGTH(body) FROM records WHERE lane = ? AND id > ? ORDER BY id LIMIT ?"
)
# (lane, cursor, last, plausible): the scanned records that have an age.
EXPIRE_DELETE = "DELETE FROM records WHERE lane = ? AND id > ? AND id <= ? AND ts_ms >= ?"

# -- by id ---------------------------------------------------------------------------------------

DELETE_IDS = "DELETE FROM records WHERE id IN ({})"
# (first, last): an ack of consecutive ids (the usual one: a take of one lane) by range.
DELETE_RANGE = "DELETE FROM records WHERE id BETWEEN ? AND ?"
DELETE_IDS_RETURNING = "DELETE FROM records WHERE id IN ({}) RETURNING lane, LENGTH(body)"
SIZES_OF_IDS = "SELECT id, lane, LENGTH(body) FROM records WHERE id IN ({})"
BODY_CHARS_OF_IDS = "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records WHERE id IN ({})"


@lru_cache(maxsize=1024)  # n is at most a batch's size: the texts of an ack are reused
def ids_in(template: str, n: int) -> str:
    """A by-id template above, for a list of n ids."""
    return template.format(",".join("?" * n))


RESTAMP = (
    "UPDATE records SET ts_ms = ts_ms + ?1, "
    "body = replace(body, '\"ts\":' || ts_ms || ',', '\"ts\":' || (ts_ms + ?1) || ',') "
    "WHERE ts_ms < ?2"
)

# -- counting ------------------------------------------------------------------------------------

COUNT_ROWS = (
    "SELECT lane, COUNT(*), SUM(LENGTH(body)), SUM(typeof(ts_ms) != 'integer') "
    "FROM records GROUP BY lane"
)
EVICTIONS = "SELECT lane, reason, n FROM evictions"
COUNT_EVICTED = (
    "INSERT INTO evictions (lane, reason, n) VALUES (?, ?, ?) "
    "ON CONFLICT (lane, reason) DO UPDATE SET n = n + excluded.n"
)
COUNT_DAMAGED = (
    "INSERT INTO evictions (lane, reason, n) VALUES (?, 'damaged', ?) "
    "ON CONFLICT (lane, reason) DO UPDATE SET n = n + excluded.n"
)

# -- damaged -------------------------------------------------------------------------------------

# Rows whose lane or stamp is not one (a damaged column), and the lane they are counted under.
STRAYS = "typeof(lane) != 'integer' OR lane NOT IN (0, 1, 2) OR typeof(ts_ms) != 'integer'"
STRAY_COUNTS = (
    f"SELECT CASE WHEN typeof(lane) = 'integer' AND lane IN (0, 1) THEN lane ELSE {TELEMETRY} "
    f"END, COUNT(*) FROM records WHERE {STRAYS} GROUP BY 1"
)
# Templates on a WHERE clause (`ids_in(DELETE_IDS...)`'s or STRAYS): (problem, found_ms, *args).
COPY_DAMAGED = (
    "INSERT OR REPLACE INTO damaged (id, lane, ts_ms, body, problem, found_ms) "
    "SELECT id, lane, ts_ms, CAST(body AS BLOB), ?, ? FROM records WHERE {}"
)
DELETE_WHERE = "DELETE FROM records WHERE {}"
DAMAGED_COUNT = "SELECT COUNT(*) FROM damaged"
DAMAGED_TRIM = (
    "DELETE FROM damaged WHERE id IN (SELECT id FROM damaged ORDER BY found_ms, id LIMIT ?)"
)
