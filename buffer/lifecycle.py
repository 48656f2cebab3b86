"""The buffer file's life: created private, opened and checked, quarantined when corrupt and
salvaged into a fresh file, seeded with ids that never repeat, vacuumed after a drain.

Invariants:
- a connection `BufferFile.open` or `replace` returns has the pragmas of sql.py, passed
  `quick_check`, holds the schema, and its id sequence is seeded: the Store's first transaction
  finds a sound file;
- a corrupt file is never opened for writing nor deleted: it is moved aside (with its WAL) under
  `<file>.corrupt-<UTC stamp>` and kept for inspection; a file that cannot be moved aside is a
  BufferOpenError (the daemon does not start on it);
- nothing here counts records in memory: `salvage` returns what it could not copy, and the Store
  counts it (see accounting.py).

Permissions: the file is created 0600 (SQLite gives its -wal and -shm the file's mode), and an
existing file or sidecar readable by others is made 0600 at open: records may be sensitive.

Ids: a new file starts its AUTOINCREMENT sequence at `incarnation << ID_BITS`. The incarnation is
counted in the sidecar `<file>.incarnation` (written atomically before the file is seeded) and the
file's own sequence repairs a sidecar that fell behind at every open, so a file that is deleted or
quarantined as corrupt is followed by one whose ids are all higher. Only losing the sidecar and
the file together (or a corrupt file whose sidecar was lost since its last open) can restart the
ids. 2^40 ids per incarnation (35 years at 1000 readings/s); JSON-safe (< 2^53) for 8191 of them.

Salvage: a file found corrupt (at start or while running) is moved aside, and every row that can
still be read from it (see salvage.py) is copied into the fresh file with its id; the rest are
counted as "<lane>/corrupt": the tally (or, while running, the in-memory depth) minus what was
salvaged. Only when the tally's page is unreadable too is the loss an estimate (logged so).

Vacuum: once a backlog is drained (`take` finds nothing to send), half of the file is free and
little is live, VACUUM rewrites the file. It writes only the live pages (then just records in
flight), where incremental vacuum would rewrite about half a page per freed page; until then
freed pages are reused by new records.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from gatewayd.errors import PlacedError
from gatewayd.files import write_atomic

from . import sql
from .accounting import LANE_NAMES
from .salvage import Damaged
from .sql import ID_BITS, TELEMETRY

log = logging.getLogger("gatewayd.buffer")

SALVAGE_CHUNK = 5000
VACUUM_MIN_FREE_PAGES = 256
VACUUM_FREE_FRACTION = 0.5
VACUUM_MAX_LIVE_BYTES = 16 << 20


class BufferOpenError(PlacedError):
    """The buffer file cannot be opened or created (missing or read-only directory, ...)."""


class Corrupt(Exception):
    """SQLite found the file corrupt (or not a database) on opening it."""


def sqlite_code(exc: BaseException) -> int:
    """The primary SQLite result code of an exception (extended codes folded), 0 if none."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_corrupt(exc: BaseException) -> bool:
    return sqlite_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class BufferFile:
    """One buffer file's path, its id incarnation, and what was quarantined and salvaged by this
    process. Holds no connection: `open` and `replace` hand one to the Store, which owns it."""

    def __init__(self, path: Path, sync: str) -> None:
        self.path = path
        self.sync = sync
        self.quarantined: list[Path] = []  # corrupt files moved aside by this process
        self.salvaged = 0  # records copied out of those files into the fresh one
        self.incarnation = 0
        check_directory(path)

    def open(self) -> tuple[sqlite3.Connection, Path | None]:
        """The checked, seeded connection; and the corrupt file moved aside first, if any (for
        `salvage`, once the Store is ready to count)."""
        moved = None
        try:
            db = self._open_checked()
        except Corrupt as exc:
            moved = self._quarantine(str(exc))
            db = self._open_checked()
        self.incarnation = self._seed_ids(db)
        return db, moved

    def replace(self, db: sqlite3.Connection, problem: str) -> tuple[sqlite3.Connection, Path]:
        """A file found corrupt while running: close it, move it aside, open a fresh one."""
        db.close()
        moved = self._quarantine(problem)
        db = self._open_checked()
        self.incarnation = self._seed_ids(db)
        return db, moved

    def _open_checked(self) -> sqlite3.Connection:
        try:
            private(self.path)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise _open_error(self.path, exc) from exc
        try:
            for pragma in sql.pragmas(self.sync):
                db.execute(pragma)
            problems = [r[0] for r in db.execute(sql.QUICK_CHECK)]
            if problems != ["ok"]:
                raise Corrupt("; ".join(problems))
            db.executescript(sql.SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            if is_corrupt(exc):
                raise Corrupt(str(exc)) from exc
            raise _open_error(self.path, exc) from exc
        except Corrupt:
            db.close()
            raise
        return db

    def _quarantine(self, problem: str) -> Path:
        """Move a corrupt file (and its WAL) aside with a timestamp; the caller starts afresh."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, moved)
            wal = Path(f"{self.path}-wal")
            if wal.exists():
                os.replace(wal, f"{moved}-wal")
            Path(f"{self.path}-shm").unlink(missing_ok=True)
        except OSError as exc:
            raise BufferOpenError(
                str(self.path),
                f"corrupt ({problem}) and cannot be moved aside: {exc.strerror}",
                "remove the file by hand",
            ) from exc
        self.quarantined.append(moved)
        log.error("buffer_quarantined path=%s moved_to=%s problem=%r", self.path, moved, problem)
        return moved

    def _seed_ids(self, db: sqlite3.Connection) -> int:
        """This file's incarnation; a new file is seeded from the sidecar counter first."""
        sidecar = self.path.with_name(self.path.name + ".incarnation")
        try:
            known = int(sidecar.read_text().strip())
        except (OSError, ValueError):
            known = 0
        row = db.execute(sql.SEQ).fetchone()
        if row is not None:
            incarnation = int(row[0]) >> ID_BITS
            if known < incarnation:  # the sidecar was lost: repair it from the file
                _write_sidecar(sidecar, incarnation)
            return incarnation
        incarnation = known + 1
        # Sidecar first: a crash before the seed commits only skips an incarnation.
        _write_sidecar(sidecar, incarnation)
        db.execute(sql.SEED_SEQ, (incarnation << ID_BITS,))
        return incarnation

    def salvage(
        self, db: sqlite3.Connection, moved: Path, known: list[int] | None
    ) -> dict[tuple[int, str], int]:
        """Copy every readable record of the quarantined file into `db` (fresh), with its id.
        Returns the counts the Store must add to the eviction history: the lost records as
        "<lane>/corrupt", and (at start) the old file's history. `known`: the depth per lane
        before the damage, if this process knew it (else the file's tally says)."""
        found = Damaged(moved)
        kept = [0, 0, 0]
        expected = known if known is not None else found.tally
        chunk: list[tuple[int, int, int, bytes, int]] = []
        history = found.evictions if known is None else {}
        try:
            rows = found.rows()
            while True:
                chunk = []
                for row in rows:
                    if row[1] in (0, 1, 2) and type(row[2]) is int:
                        chunk.append(row)
                    if len(chunk) >= SALVAGE_CHUNK:
                        break
                if not chunk:
                    break
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(sql.INSERT_SALVAGED, chunk)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                for row in chunk:
                    kept[row[1]] += 1
        except sqlite3.Error as exc:  # e.g. no room for the copy: what is left is lost, counted
            log.error("buffer_salvage_stopped path=%s error=%s", self.path, exc)
        finally:
            found.close()
            Path(f"{moved}-shm").unlink(missing_ok=True)  # only an index, made by the read
        # The tally is unreadable too: without unreadable records nothing was lost; else the
        # ids spanned by the damage are the best bound there is (0 when no id is readable).
        estimated = expected is None and found.regions > 0
        if expected is None:
            gap = found.gap_ids if estimated else 0
            expected = [k + (gap if lane == TELEMETRY else 0) for lane, k in enumerate(kept)]
        lost = [max(0, e - k) for e, k in zip(expected, kept, strict=True)]
        counts = dict(history)
        for lane, n in enumerate(lost):
            if n:
                counts[(lane, "corrupt")] = counts.get((lane, "corrupt"), 0) + n
        self.salvaged += sum(kept)
        log.error(
            "buffer_salvaged path=%s from=%s salvaged=%d lost=%d by_lane=%s unreadable_regions=%d"
            "%s",
            self.path,
            moved,
            sum(kept),
            sum(lost),
            ",".join(
                f"{LANE_NAMES[la]}:{k}/{k + n}"
                for la, (k, n) in enumerate(zip(kept, lost, strict=True))
            ),
            found.regions,
            " lost_is_estimate=1" if estimated else "",
        )
        return counts


def maybe_vacuum(db: sqlite3.Connection, live_bytes: int) -> None:
    """Give a drained backlog's space back to the file system (see "Vacuum")."""
    free = db.execute(sql.FREELIST_COUNT).fetchone()[0]
    if free < VACUUM_MIN_FREE_PAGES or live_bytes > VACUUM_MAX_LIVE_BYTES:
        return
    pages = db.execute(sql.PAGE_COUNT).fetchone()[0]
    if free < pages * VACUUM_FREE_FRACTION:
        return
    db.execute(sql.BUSY_NONE)  # never make appends wait for a reader's snapshot
    try:
        db.execute("VACUUM")
        # The file shrinks when the WAL is checkpointed; do it now, not after 1 MiB more.
        db.execute(sql.CHECKPOINT_PASSIVE).fetchall()
    except sqlite3.Error as exc:  # e.g. the CLI holds a read snapshot: next time
        log.info("buffer_vacuum_postponed error=%s", exc)
        return
    finally:
        db.execute(sql.BUSY_DEFAULT)
    log.info("buffer_vacuumed pages_before=%d free_before=%d", pages, free)


def file_bytes(path: Path) -> int:
    """The database file plus its WAL."""
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


def check_directory(path: Path) -> None:
    directory = path.parent
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
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise BufferOpenError(
            str(path), "file is not readable and writable", "give the gatewayd user access to it"
        )


def private(path: Path) -> None:
    """Create the file 0600 before SQLite does (its -wal and -shm then get the same mode), and
    take group and other access away from an existing file and sidecars."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if p.stat().st_mode & 0o077:
                os.chmod(p, 0o600)


def _write_sidecar(path: Path, incarnation: int) -> None:
    try:
        write_atomic(path, f"{incarnation}\n")
    except OSError as exc:
        raise BufferOpenError(
            str(path), f"cannot write the id counter: {exc.strerror}", "give gatewayd access"
        ) from exc


def _open_error(path: Path, exc: sqlite3.Error | OSError) -> BufferOpenError:
    return BufferOpenError(
        str(path), f"cannot open: {exc}", "check the file system, its permissions and free space"
    )
