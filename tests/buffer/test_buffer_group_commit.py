"""Group commit and the hops it saves, against real SQLite files and a real SIGKILL.

- appends from many tasks arriving a little apart share transactions, and every append that
  returned is durable: a child process is killed with SIGKILL right after appends return, and
  every id they returned is in the reopened file;
- an ack queued with `ack_soon` rides with the next append (one job) and is applied before it;
  with no other job it is still applied (ACK_CARRY_S later);
- a take that found the buffer drained answers [] until something is appended, and then the new
  records come at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from gatewayd.buffer import Buffer
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Record


def recs(n: int, start: int = 0) -> list[Record]:
    return [
        Record(f"d/p{i % 40}", 1_760_000_000_000 + i, float(i), lane=Lane.TELEMETRY)
        for i in range(start, start + n)
    ]


def ids_in(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT id FROM records")}


CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from gatewayd.buffer import Buffer
    from gatewayd.config import BufferConfig
    from gatewayd.reading import Lane, Record

    async def one(buf, k):
        await asyncio.sleep(k * 0.0005)  # arrivals spread over a few milliseconds
        rs = [Record(f"d/p{i}", 1_760_000_000_000 + i, float(i), lane=Lane.TELEMETRY)
              for i in range(k * 10, k * 10 + 10)]
        ids = await buf.append(rs)
        sys.stdout.write(json.dumps(ids) + "\\n")
        sys.stdout.flush()

    async def main():
        buf = await Buffer.open(sys.argv[1], BufferConfig(sync=sys.argv[2]))
        while True:  # until killed: rounds of 20 concurrent appends
            await asyncio.gather(*(one(buf, k) for k in range(20)))

    asyncio.run(main())
    """
)


def test_appends_that_returned_survive_sigkill_of_the_process(tmp_path: Path) -> None:
    for sync in ("normal", "full"):
        db = tmp_path / f"buf-{sync}.db"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), sync],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert child.stdout is not None
        returned: list[int] = []
        try:
            for _ in range(45):  # into the third round: appends are in flight when it dies
                line = child.stdout.readline()
                assert line, "the child process ended before it appended"
                returned += json.loads(line)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        with contextlib.suppress(ValueError):
            returned += [i for ln in child.stdout.read().splitlines() for i in json.loads(ln)]
        assert 0 not in returned
        missing = set(returned) - ids_in(db)
        assert not missing, f"sync={sync}: {len(missing)} returned ids lost after SIGKILL"


def test_appends_a_little_apart_share_commits(tmp_path: Path) -> None:
    async def go() -> tuple[list[list[int]], int]:
        buf = await Buffer.open(tmp_path / "b.db", BufferConfig())

        async def one(k: int) -> list[int]:
            await asyncio.sleep(k * 0.0008)  # 10 appends over ~7 ms, each alone if not waited for
            return await buf.append(recs(5, start=k * 5))

        try:
            return list(await asyncio.gather(*(one(k) for k in range(10)))), buf.commits
        finally:
            await buf.close()

    results, commits = asyncio.run(go())
    flat = [i for ids in results for i in ids]
    assert len(set(flat)) == 50 and 0 not in flat
    assert all(ids == sorted(ids) for ids in results)
    # GROUP_WINDOW_S (2 ms) gathers about three of them per commit; a slow machine gathers more.
    assert commits <= 6, f"{commits} commits for 10 appends within ~7 ms: no group commit"


def test_queued_ack_is_applied_before_the_next_append_and_alone_too(tmp_path: Path) -> None:
    path = tmp_path / "b.db"

    async def go() -> tuple[set[int], set[int], set[int]]:
        buf = await Buffer.open(path, BufferConfig())
        try:
            first = await buf.append(recs(10))
            taken = await buf.take(100, 1 << 20)
            assert [e.id for e in taken] == first
            buf.ack_soon(first[:5])
            second = await buf.append(recs(3, start=10))
            after_append = ids_in(path)  # the ack was in the append's job, before its commit
            buf.ack_soon(first[5:])
            for _ in range(200):  # no other job: the carrier applies it (ACK_CARRY_S)
                if not set(first) & ids_in(path):
                    break
                await asyncio.sleep(0.05)
            return set(first), after_append, set(second)
        finally:
            await buf.close()

    first, after_append, second = asyncio.run(go())
    assert after_append == (set(sorted(first)[5:]) | second)
    assert ids_in(path) == second


def test_drained_take_answers_empty_then_new_records_come_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        buf = await Buffer.open(tmp_path / "b.db", BufferConfig())
        try:
            ids = await buf.append(recs(4))
            assert [e.id for e in await buf.take(100, 1 << 20)] == ids
            assert await buf.take(100, 1 << 20) == []
            more = await buf.append(recs(2, start=4))
            assert [e.id for e in await buf.take(100, 1 << 20)] == more
            # A take cut by max_records is not "drained": the rest comes next.
            many = await buf.append(recs(6, start=6))
            assert [e.id for e in await buf.take(4, 1 << 20)] == many[:4]
            assert [e.id for e in await buf.take(4, 1 << 20)] == many[4:]
            await buf.rewind()  # everything unacked comes again
            assert len(await buf.take(100, 1 << 20)) == 12
        finally:
            await buf.close()

    asyncio.run(go())
