"""asyncio face of the Store: every call runs on the one thread that owns the SQLite connection.

Group commit: appends that arrive while a commit is running are queued and committed together in
the next transaction, so many drivers appending at once cost one fsync, not one each. `append`
never raises for a full buffer, a full disk or a corrupt file (the Store evicts, counts, and
replaces the file); it waits only for its own commit, never for the uplink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record

from .store import Entry, Stats, Store

T = TypeVar("T")


class Buffer:
    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._db = executor
        self._pending: list[tuple[Sequence[Record], asyncio.Future[list[int]]]] = []
        self._flushing = False
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
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def append(self, records: Sequence[Record]) -> list[int]:
        """Store records; returns their ids once they are committed."""
        if not records:
            return []
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        try:
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
        return await self._run(self._store.take, max_records, max_bytes)

    async def ack(self, ids: Sequence[int]) -> int:
        return await self._run(self._store.ack, ids)

    async def restamp(self, before_ms: int, delta_ms: int) -> int:
        return await self._run(self._store.restamp, before_ms, delta_ms)

    async def nack(self, ids: Sequence[int]) -> None:
        await self._run(self._store.nack, ids)

    async def rewind(self) -> None:
        await self._run(self._store.rewind)

    async def stats(self) -> Stats:
        return await self._run(self._store.snapshot)

    async def peek(self, n: int, lane: Lane | None = None) -> list[Entry]:
        return await self._run(self._store.peek, n, lane)

    async def close(self) -> None:
        while self._flushing:
            await asyncio.sleep(0.01)
        await self._run(self._store.close)
        self._db.shutdown(wait=True)
