"""One hop to the writer thread and one transaction per poll, against a real SQLite file.

- a poll's cycle (append, take, take, ack of the delivered batch) is one job for the writer
  thread (`Buffer.hops`), also while queued acks wait for the next append;
- the ack of a delivered batch and the next append are one transaction: one commit frame in the
  WAL (read from the file itself);
- the take answered from the append's job is the Store's take: a higher lane appended after it
  still comes first, and a take with smaller limits gets what fits, the rest next.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gatewayd.buffer import Buffer
from gatewayd.buffer.codec import encode_body
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record


def recs(n: int, start: int = 0, lane: Lane = Lane.TELEMETRY) -> list[Record]:
    return [
        Record(f"d/p{i % 40}", 1_760_000_000_000 + i, float(i), lane=lane)
        for i in range(start, start + n)
    ]


def wal_commits(path: Path) -> int:
    """Commit frames in the WAL since it was last reset (frames whose salt is the header's)."""
    data = Path(f"{path}-wal").read_bytes()
    if len(data) < 32:
        return 0
    page, salt = int.from_bytes(data[8:12], "big"), data[16:24]
    n, at = 0, 32
    while at + 24 + page <= len(data) and data[at + 8 : at + 16] == salt:
        n += int.from_bytes(data[at + 4 : at + 8], "big") != 0
        at += 24 + page
    return n


def test_a_poll_cycle_is_one_job_for_the_writer_thread(tmp_path: Path) -> None:
    cycles = 40

    async def go() -> int:
        buf = await Buffer.open(tmp_path / "b.db", BufferConfig())
        try:
            assert await buf.take(2000, 1 << 20) == []
            for k in range(3):  # settle: the first takes, the statement cache
                ids = await buf.append(recs(100, 100 * k))
                taken = await buf.take(2000, 1 << 20)
                assert [e.id for e in taken] == ids
                assert await buf.take(2000, 1 << 20) == []
                buf.ack_soon(ids)
                await asyncio.sleep(0.02)
            before = buf.hops
            for k in range(3, 3 + cycles):
                ids = await buf.append(recs(100, 100 * k))
                taken = await buf.take(2000, 1 << 20)
                assert [e.id for e in taken] == ids
                assert await buf.take(2000, 1 << 20) == []
                buf.ack_soon(ids)
                await asyncio.sleep(0.02)  # the next poll: the writer thread sleeps meanwhile
            return buf.hops - before
        finally:
            await buf.close()

    hops = asyncio.run(go())
    # One per cycle (one more if a loaded box stalls a cycle past ACK_CARRY_S).
    assert hops <= cycles + 1, f"{hops} jobs for the writer thread in {cycles} poll cycles"


def test_the_ack_of_a_delivered_batch_shares_the_next_appends_transaction(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    async def go() -> int:
        buf = await Buffer.open(path, BufferConfig())
        try:
            first = await buf.append(recs(10))
            assert [e.id for e in await buf.take(100, 1 << 20)] == first
            buf.ack_soon(first)
            before = wal_commits(path)
            await buf.append(recs(3, start=10))
            return wal_commits(path) - before
        finally:
            await buf.close()

    assert asyncio.run(go()) == 1


def test_the_take_an_append_answers_keeps_lane_order_and_limits(tmp_path: Path) -> None:
    async def go() -> None:
        buf = await Buffer.open(tmp_path / "b.db", BufferConfig())
        try:
            assert await buf.take(100, 1 << 20) == []
            tele = await buf.append(recs(5))
            alarm = await buf.append(recs(2, start=5, lane=Lane.ALARM))
            taken = await buf.take(100, 1 << 20)
            assert [e.id for e in taken] == alarm + tele  # the alarm lane first
            assert [e.lane for e in taken] == [0, 0, 2, 2, 2, 2, 2]
            assert await buf.take(100, 1 << 20) == []
            more = await buf.append(recs(6, start=7))
            assert [e.id for e in await buf.take(4, 1 << 20)] == more[:4]
            assert [e.id for e in await buf.take(4, 1 << 20)] == more[4:]
            last = await buf.append(recs(3, start=13))
            body = len(encode_body(recs(1, start=13)[0]))  # 14 and 15 are as long
            assert [e.id for e in await buf.take(100, 2 * body + 1)] == last[:2]  # max_bytes
            assert [e.id for e in await buf.take(100, 1 << 20)] == last[2:]
            buf.ack_soon([*alarm, *tele, *more, *last])
            await buf.nack([])  # a job to carry the ack
            assert (await buf.stats()).depth == 0
        finally:
            await buf.close()

    asyncio.run(go())
