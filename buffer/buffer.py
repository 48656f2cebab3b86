"""asyncio face of the Store: every call runs on the one thread that owns the SQLite connection.

Group commit: appends that arrive while a commit is running are committed together in the next
transaction; an append that comes within GROUP_WINDOW_S of the previous one also waits that long
for others (a lone append does not wait), so many drivers appending at once cost one commit, not
one each. `append` returns only after the transaction holding its records committed;
it never raises for a full buffer, a full disk or a corrupt file (the Store evicts, counts, and
replaces the file); it waits only for its own commit, never for the uplink.

Fewer hops to the writer thread (each costs a thread wake-up and a loop wake-up):
- `ack_soon` queues ids; they are acked on the writer thread at the start of the next job
  (append, take, or any other call; at the latest ACK_CARRY_S later), so acks are applied in
  call order and a delivered batch's ack rides with the next append or take. A crash before
  that ack only re-sends (a duplicate, never a loss): records leave the file only by an ack;
- a take that found every lane drained is remembered with the Store's append count; until a
  record is appended (or nack/rewind), or TAKE_RECHECK_S passed, `take` answers [] at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record

from .store import Entry, Stats, Store

T = TypeVar("T")
log = logging.getLogger("gatewayd.buffer")

GROUP_WINDOW_S = 0.002  # appends this close together wait this long to share a transaction
ACK_CARRY_S = 0.5  # queued acks wait at most this long for an append or take to carry them
TAKE_RECHECK_S = 1.0  # a drained buffer is still asked this often (expiry, vacuum, the CLI)


class Buffer:
    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._db = executor
        self._pending: list[tuple[Sequence[Record], asyncio.Future[list[int]]]] = []
        self._flushing = False
        self._acks: list[int] = []  # acked by the uplink, applied at the start of the next job
        self._drained_at: int | None = None  # Store.appended when a take found nothing more
        self._recheck_at = 0.0
        self._last_append = float("-inf")  # monotonic, of the last append call
        self._ack_timer: asyncio.TimerHandle | None = None
        self._carrier: asyncio.Task[None] | None = None  # carries acks no other job took
        self.commits = 0  # transactions for appends (fewer than appends: group commit)
        # Set whenever records were appended; the uplink waits on it when the buffer is drained.
        self.appended = asyncio.Event()

    @classmethod
    async def open(cls, path: str | Path, cfg: BufferConfig) -> Buffer:
        db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(db, Store, path, cfg)
        except BaseException:
            db.shutdown(wait=False)
            raise
        return cls(store, db)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._acks:
            acks, self._acks = self._acks, []
            return await loop.run_in_executor(self._db, self._acked_then, acks, fn, args)
        return await loop.run_in_executor(self._db, fn, *args)

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
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, fut))
        now = time.monotonic()
        # Wait for company only when appends come close together: a lone poll's timer would
        # cost loop wake-ups and latency for nothing.
        close = now - self._last_append < GROUP_WINDOW_S
        self._last_append = now
        self._start_flush(wait=close)
        return await fut

    def ack_soon(self, ids: Sequence[int]) -> None:
        """Queue an ack; it is applied on the writer thread before the next job (see above), or
        ACK_CARRY_S later when no job came to carry it."""
        if not self._acks and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_CARRY_S, self._carry_acks)
        self._acks.extend(ids)

    def _carry_acks(self) -> None:
        self._ack_timer = None
        if self._acks and (self._carrier is None or self._carrier.done()):
            self._carrier = asyncio.get_running_loop().create_task(self._run(_nothing))

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
                flat = [r for recs, _ in batch for r in recs]
                try:
                    ids: list[int] = await self._run(self._store.append, flat)
                    self.commits += 1
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
                self.appended.set()
        finally:
            self._flushing = False

    async def take(self, max_records: int, max_bytes: int) -> list[Entry]:
        if self._drained_at == self._store.appended and time.monotonic() < self._recheck_at:
            return []  # nothing was appended since a take found the buffer drained
        entries, drained_at = await self._run(self._take, max_records, max_bytes)
        self._drained_at = drained_at
        self._recheck_at = time.monotonic() + TAKE_RECHECK_S
        return entries

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
        await self._run(self._store.nack, ids)

    async def rewind(self) -> None:
        self._drained_at = None
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
        self._db.shutdown(wait=True)


def _nothing() -> None:
    """A job that only carries queued acks to the writer thread."""
