"""asyncio face of the Store: every call runs on the one thread that owns the SQLite connection.

Group commit: appends that arrive while a commit is running are committed together in the next
transaction; an append that comes within GROUP_WINDOW_S of the previous one also waits that long
for others (a lone append does not wait), so many drivers appending at once cost one commit, not
one each. `append` returns only after the transaction holding its records committed;
it never raises for a full buffer, a full disk or a corrupt file (the Store evicts, counts, and
replaces the file); it waits only for its own commit, never for the uplink.

One hop to the writer thread per poll (each hop costs a thread wake-up and a loop wake-up):
- `ack_soon` queues ids; they are acked on the writer thread at the start of the next job
  (append, take, or any other call; at the latest ACK_CARRY_S later), so acks are applied in
  call order and a delivered batch's ack rides with the next append, in its transaction. A crash
  before that commit only re-sends (a duplicate, never a loss): records leave the file only by
  an ack;
- a take that found every lane drained is remembered with the Store's append count; until a
  record is appended (or nack/rewind), or TAKE_RECHECK_S passed, `take` answers [] at once;
- the append after such a take also takes, in the same job (`Store.append_take`, with the
  limits of the last take): the records it committed are kept ready, in flight, and the next
  `take` answers them without a hop; further appends add theirs while the Store's take is still
  drained and less than a take's worth (max_records) is ready. Ready records are given back
  (`nack`) and taken again from the file when a record was appended that is not among them, or
  they do not fit the take's limits, so a take answers exactly what the Store's take would;
  `rewind` drops them (the Store's cursors go back).

The writer is one thread with a queue, not a ThreadPoolExecutor: a job is a tuple and its
answer one `call_soon_threadsafe`, without an executor future, its condition variable and the
chaining of two futures.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record

from .sql import TELEMETRY
from .store import Entry, Stats, Store
from .wake import Wake

T = TypeVar("T")
_Committed = tuple[list[int], list["Entry"], int | None]  # ids, taken ahead, drained at
log = logging.getLogger("gatewayd.buffer")

GROUP_WINDOW_S = 0.002  # appends this close together wait this long to share a transaction
# Queued acks wait at most this long for an append or take to carry them: longer than the
# usual 1 s poll, so that its acks share the next poll's transaction.
ACK_CARRY_S = 1.5
TAKE_RECHECK_S = 1.0  # a drained buffer is still asked this often (expiry, vacuum, the CLI)

_Then = Callable[[Any], None] | None
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", _Then] | None


class Writer:
    """The thread that owns the Store's connection: runs jobs in order, one at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="buffer_0", daemon=True)
        self._thread.start()
        self.jobs = 0  # hops to this thread (a measure of the per-poll cost)

    def run(self, fn: Callable[..., T], *args: Any, then: _Then = None) -> asyncio.Future[T]:
        """`fn(*args)` on this thread; `then(result)` runs on the loop before the future is
        resolved, also when its waiter was cancelled meanwhile."""
        fut: asyncio.Future[T] = self._loop.create_future()
        self.jobs += 1
        self._jobs.put((fn, args, fut, then))
        return fut

    def _work(self) -> None:
        get, answer = self._jobs.get, self._loop.call_soon_threadsafe
        while (job := get()) is not None:
            fn, args, fut, then = job
            try:
                result = fn(*args)
            except BaseException as exc:
                try:
                    answer(_fail, fut, exc)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
                continue
            try:
                answer(_done, fut, result, then)
            except RuntimeError:
                return

    def stop(self) -> None:
        """After the last job: the thread ends once the queue is worked off."""
        self._jobs.put(None)
        self._thread.join()


def _done(fut: asyncio.Future[Any], result: Any, then: _Then) -> None:
    if then is not None:
        then(result)
    if not fut.done():  # a waiter cancelled
        fut.set_result(result)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Buffer:
    def __init__(self, store: Store, writer: Writer) -> None:
        self._store = store
        self._db = writer
        self._pending: list[tuple[Sequence[Record], asyncio.Future[list[int]]]] = []
        self._flushing = False
        self._acks: list[int] = []  # acked by the uplink, applied at the start of the next job
        self._acks_since = 0.0  # monotonic, when the oldest of them was queued
        self._drained_at: int | None = None  # Store.appended when a take found nothing more
        self._recheck_at = 0.0
        self._limits: tuple[int, int] | None = None  # of the last take (None: since a rewind)
        self._ready: list[Entry] = []  # taken by an append's job, for the next take
        self._ready_at = 0  # Store.appended when they were taken
        self._last_append = float("-inf")  # monotonic, of the last append call
        self._ack_timer: asyncio.TimerHandle | None = None
        self._carrier: asyncio.Task[None] | None = None  # carries acks no other job took
        self.commits = 0  # transactions for appends (fewer than appends: group commit)
        # Set whenever records were appended; the uplink waits on it when the buffer is drained.
        self.appended = Wake()

    @property
    def hops(self) -> int:
        """Jobs sent to the writer thread so far."""
        return self._db.jobs

    @classmethod
    async def open(cls, path: str | Path, cfg: BufferConfig) -> Buffer:
        db = Writer(asyncio.get_running_loop())
        try:
            store = await db.run(Store, path, cfg)
        except BaseException:
            db.stop()
            raise
        return cls(store, db)

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._acks:
            acks, self._acks = self._acks, []
            return self._db.run(self._acked_then, acks, fn, args)
        return self._db.run(fn, *args)

    def _acked_then(self, acks: list[int], fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """On the writer thread: the queued acks, then the job they were queued before."""
        try:
            self._store.ack(acks)
        except Exception as exc:  # the records stay and are sent again: a duplicate, not a loss
            log.warning("buffer_ack_failed n=%d error=%s", len(acks), exc)
        return fn(*args)

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store records; returns their ids once they are committed."""
        if not records:
            return []
        now = time.monotonic()
        # Wait for company only when appends come close together: a lone poll's timer would
        # cost loop wake-ups and latency for nothing.
        close = now - self._last_append < GROUP_WINDOW_S
        self._last_append = now
        if not close and not self._flushing:  # a lone append: its own job, from this task
            self._flushing = True
            try:
                ids, _, _ = await self._commit(list(records))
            finally:
                self._flushing = False
                if self._pending:  # came while this one was committed
                    self._start_flush(wait=False)
            return ids
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, fut))
        self._start_flush(wait=close)
        return await fut

    def _commit(self, records: list[Record]) -> asyncio.Future[_Committed]:
        """One job: the queued acks, the append and the take ahead (see the module docstring);
        its bookkeeping on the loop (`_committed`) happens even if the waiter is cancelled."""
        acks, self._acks = self._acks, []
        # Take ahead while less than a take's worth is ready (memory stays bounded while the
        # uplink does not take).
        limits = self._limits
        if limits is not None and len(self._ready) >= limits[0]:
            limits = None
        return self._db.run(self._append_take, records, acks, limits, then=self._committed)

    def _committed(self, result: _Committed) -> None:
        _, ready, drained_at = result
        self.commits += 1
        if ready:
            self._ready = _merge(self._ready, ready) if self._ready else ready
            self._ready_at = self._store.appended
            self._drained_at = drained_at
            self._recheck_at = time.monotonic() + TAKE_RECHECK_S
        self.appended.set()

    def ack_soon(self, ids: Sequence[int]) -> None:
        """Queue an ack; it is applied on the writer thread before the next job (see above), or
        ACK_CARRY_S later when no job came to carry it."""
        if not self._acks:
            self._acks_since = time.monotonic()
            if self._ack_timer is None:
                self._ack_timer = asyncio.get_running_loop().call_later(
                    ACK_CARRY_S, self._carry_acks
                )
        self._acks.extend(ids)

    def _carry_acks(self) -> None:
        """The timer: carry acks queued ACK_CARRY_S ago or more; younger ones wait for a job."""
        loop = asyncio.get_running_loop()
        self._ack_timer = None
        if not self._acks:
            return
        wait = self._acks_since + ACK_CARRY_S - time.monotonic()
        if wait > 0:  # carried since, and queued again: not old enough
            self._ack_timer = loop.call_later(wait, self._carry_acks)
        elif self._carrier is None or self._carrier.done():
            self._carrier = loop.create_task(self._carry())
        else:  # the last carrier still runs: these go with the next one
            self._ack_timer = loop.call_later(ACK_CARRY_S, self._carry_acks)

    async def _carry(self) -> None:
        await self._run(_nothing)

    def _start_flush(self, wait: bool) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush(wait))

    async def _flush(self, wait: bool) -> None:
        try:
            if wait:
                await asyncio.sleep(GROUP_WINDOW_S)
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    ids, _, _ = await self._commit([r for recs, _ in batch for r in recs])
                except Exception as exc:  # resolve every waiter; the caller decides
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                at = 0
                for recs, fut in batch:
                    if not fut.done():
                        fut.set_result(ids[at : at + len(recs)])
                    at += len(recs)
        finally:
            self._flushing = False

    def _append_take(
        self, records: list[Record], acks: list[int], limits: tuple[int, int] | None
    ) -> tuple[list[int], list[Entry], int | None]:
        """On the writer thread: the acks and the append (one transaction), and the take that
        follows a drained one; with the append count when that take left nothing behind."""
        store = self._store
        try:
            ids, ready = store.append_take(records, acks, limits)
        except Exception:  # the append failed: its acks still count (a duplicate at worst)
            if acks:
                self._acked_then(acks, _nothing, ())
            raise
        return ids, ready, store.appended if store.drained else None

    def nothing_to_take(self) -> bool:
        """A take now would answer [] without a hop (nothing appended since a drained take)."""
        return (
            not self._ready
            and self._drained_at == self._store.appended
            and time.monotonic() < self._recheck_at
        )

    async def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        self._limits = (max_records, max_bytes)
        if self._ready:
            ready, self._ready = self._ready, []
            if self._ready_at == self._store.appended and _fits(ready, max_records, max_bytes):
                return ready
            # Something came after them (maybe of a higher lane), or they do not fit: give them
            # back and take again, in one job.
            entries, drained_at = await self._run(
                self._retake, [e.id for e in ready], max_records, max_bytes
            )
        elif self._drained_at == self._store.appended and time.monotonic() < self._recheck_at:
            return []  # nothing was appended since a take found the buffer drained
        else:
            entries, drained_at = await self._run(self._take, max_records, max_bytes)
        self._drained_at = drained_at
        self._recheck_at = time.monotonic() + TAKE_RECHECK_S
        return entries

    def _retake(
        self, ids: list[int], max_records: int, max_bytes: int
    ) -> tuple[list[Entry], int | None]:
        self._store.nack(ids)
        return self._take(max_records, max_bytes)

    def _take(self, max_records: int, max_bytes: int) -> tuple[list[Entry], int | None]:
        """On the writer thread: the take, and the append count when it left nothing behind."""
        store = self._store
        entries = store.take(max_records, max_bytes)
        return entries, store.appended if store.drained else None

    async def ack(self, ids: Sequence[int]) -> int:
        return await self._run(self._store.ack, ids)

    async def restamp(self, before_ms: int, delta_ms: int) -> int:
        return await self._run(self._store.restamp, before_ms, delta_ms)

    async def nack(self, ids: Sequence[int]) -> None:
        self._drained_at = None
        ready, self._ready = self._ready, []  # given back with them (they came after)
        await self._run(self._store.nack, [*ids, *(e.id for e in ready)])

    async def rewind(self) -> None:
        self._drained_at = None
        self._ready = []  # the Store's cursors go back: they are taken again
        self._limits = None  # no take ahead until a take asks again (a new session)
        await self._run(self._store.rewind)

    async def stats(self) -> Stats:
        return await self._run(self._store.snapshot)

    async def peek(self, n: int, lane: Lane | None = None) -> list[Entry]:
        return await self._run(self._store.peek, n, lane)

    async def close(self) -> None:
        if self._ack_timer is not None:  # the close below carries the queued acks
            self._ack_timer.cancel()
            self._ack_timer = None
        while self._flushing:
            await asyncio.sleep(0.01)
        await self._run(self._store.close)
        self._db.stop()


def _merge(ready: list[Entry], fresh: list[Entry]) -> list[Entry]:
    """Two takes ahead, each of everything after the cursors: together, in a take's order."""
    if all(e.lane == TELEMETRY for e in ready) and all(e.lane == TELEMETRY for e in fresh):
        return ready + fresh  # one lane: id order
    return sorted(ready + fresh, key=lambda e: (e.lane, e.id))


def _fits(entries: list[Entry], max_records: int, max_bytes: int) -> bool:
    """Whether a take with these limits would have answered all of `entries` (see Store)."""
    if len(entries) > max_records:
        return False
    return len(entries) == 1 or sum([len(e.body) for e in entries]) <= max_bytes


def _nothing() -> None:
    """A job that only carries queued acks to the writer thread."""
