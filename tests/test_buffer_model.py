"""Model-based test of the buffer: random steps against an in-memory oracle, checked after each.

Steps: append, take, ack, nack, rewind, restart, crash (a forked child appends to the file in a
loop and is SIGKILLed, usually inside a transaction), fill-to-eviction (telemetry, or alarms and
events), lose the id sidecar, delete the file, corrupt the file.

After every step, against the file itself:
- nothing acked (or unknown) is in the file; only right after a crash may ids appear that no
  append returned (the child's last append was cut off), and those must be new;
- everything appended-and-returned is in the file, unless acked or counted as evicted: per lane,
  the records gone missing equal the growth of that lane's eviction counters;
- an alarm is evicted only when no telemetry and no event is left, an event only when no
  telemetry is left;
- ids never repeat, also across restarts, re-creation and quarantine;
- `take` returns exactly the oldest records not in flight, alarms, then events, then telemetry;
- the store's depth and byte accounting equals a recount of the file.

Reproduce a failure with BUFFER_MODEL_SEED=<seed printed in the failure>; BUFFER_MODEL_STEPS
sets the length (default 3000).
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from gatewayd.buffer import Store
from gatewayd.buffer.store import ROW_OVERHEAD
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Quality, Record

SEED = int(os.environ.get("BUFFER_MODEL_SEED") or random.randrange(1 << 32))
STEPS = int(os.environ.get("BUFFER_MODEL_STEPS") or 3000)
T0_MS = 1_750_000_000_000
MAX_AGE_S = 600
LANES = (Lane.ALARM, Lane.EVENT, Lane.TELEMETRY)


class Model:
    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.step_no = 0
        self.cfg = BufferConfig(max_bytes=24 * 1024, max_age_s=MAX_AGE_S)
        self.live: dict[int, int] = {}  # id -> lane: returned by append, not acked or evicted
        self.inflight: set[int] = set()
        self.seen: set[int] = set()  # every id ever handed out or found in the file
        self.accounted = [0, 0, 0]  # eviction totals per lane already matched to missing ids
        self.store = self._open()

    def now(self) -> int:
        return T0_MS + self.step_no * 1000

    def _open(self) -> Store:
        return Store(self.path, self.cfg, now=self.now)

    def records(self, n: int, lane: Lane | None = None) -> list[Record]:
        out = []
        for _ in range(n):
            la = lane or self.rng.choices(LANES, weights=(8, 12, 80))[0]
            age_ms = self.rng.choice((0, 1000, 60_000, (MAX_AGE_S + 60) * 1000))
            value: float | str | None = self.rng.choice((1.5, -3, "on", None, 1e300))
            out.append(
                Record(
                    f"dev{self.rng.randrange(3)}/p{self.rng.randrange(50)}",
                    self.now() - age_ms,
                    value,
                    Quality.GOOD if value is not None else Quality.BAD,
                    reason=None if value is not None else "timeout",
                    lane=la,
                )
            )
        return out

    def returned(self, ids: list[int], lanes: list[int]) -> None:
        """Ids an append returned; id 0 is a record dropped by eviction (already counted)."""
        for i, lane in zip(ids, lanes, strict=True):
            if i == 0:
                self.accounted[lane] += 1
                continue
            assert i not in self.seen, f"id {i} handed out twice"
            self.seen.add(i)
            self.live[i] = lane

    # -- the check after every step ------------------------------------------------------------

    def check(self, crashed: bool = False, one_append: bool = True) -> None:
        with closing(sqlite3.connect(self.path)) as db:
            rows = dict(db.execute("SELECT id, lane FROM records").fetchall())
            (body_chars,) = db.execute(
                "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM records"
            ).fetchone()
        unknown = rows.keys() - self.live.keys()
        if unknown:
            assert crashed, f"ids {sorted(unknown)[:5]} in the file were acked or never appended"
            for i in unknown:
                assert i not in self.seen, f"id {i} came back (acked, evicted or reused)"
                self.seen.add(i)
                self.live[i] = rows[i]
        stats = self.store.snapshot()
        evicted = [0, 0, 0]
        for key, n in stats.evicted.items():
            evicted[int(Lane[key.split("/")[0].upper()])] += n
        missing = [i for i in self.live if i not in rows]
        for lane in range(3):
            gone = sum(1 for i in missing if self.live[i] == lane)
            counted = evicted[lane] - self.accounted[lane]
            # After a crash the child's last, unreported append may have dropped some of its own
            # records (counted, never returned): at most one batch of 50.
            ok = gone <= counted <= gone + 50 if crashed else gone == counted
            assert ok, f"lane {Lane(lane).name}: {gone} records missing, {counted} counted evicted"
        lanes_left = set(rows.values())
        if one_append:
            gone_lanes = {self.live[i] for i in missing}
            if int(Lane.ALARM) in gone_lanes:
                assert not lanes_left & {int(Lane.EVENT), int(Lane.TELEMETRY)}, (
                    "an alarm was evicted while events or telemetry remain"
                )
            if int(Lane.EVENT) in gone_lanes:
                assert int(Lane.TELEMETRY) not in lanes_left, (
                    "an event was evicted while telemetry remains"
                )
        for i in missing:
            del self.live[i]
            self.inflight.discard(i)
        self.accounted = evicted
        by_lane = {la.name.lower(): 0 for la in Lane}
        for lane in rows.values():
            by_lane[Lane(lane).name.lower()] += 1
        assert stats.depth_by_lane == {k: v for k, v in by_lane.items() if v}, "depth accounting"
        assert stats.bytes == body_chars + ROW_OVERHEAD * len(rows), "byte accounting"

    # -- steps ---------------------------------------------------------------------------------

    def append(self) -> None:
        recs = self.records(self.rng.randint(1, 30))
        self.returned(self.store.append(recs), [int(r.lane) for r in recs])
        self.check()

    def fill(self) -> None:
        """Append until something is evicted (telemetry, or only alarms and events)."""
        lane = self.rng.choice((None, Lane.ALARM, Lane.EVENT))
        start = sum(self.store.snapshot().evicted.values())
        for _ in range(400):
            recs = self.records(self.rng.randint(5, 40), lane)
            self.returned(self.store.append(recs), [int(r.lane) for r in recs])
            self.check()
            if sum(self.store.snapshot().evicted.values()) > start:
                return
        raise AssertionError("400 appends into a 24 KiB buffer evicted nothing")

    def take(self) -> None:
        n = self.rng.randint(1, 40)
        max_bytes = self.rng.choice((1 << 20, 1 << 20, 300))
        got = self.store.take(n, max_bytes)
        self.check()  # take may expire old telemetry first
        expected = sorted(
            (i for i in self.live if i not in self.inflight), key=lambda i: (self.live[i], i)
        )[:n]
        ids = [e.id for e in got]
        if max_bytes > 1000:
            assert ids == expected, "take: not the oldest records not in flight, by lane"
        else:
            assert ids == expected[: len(ids)] and (ids or not expected), "take under a byte cap"
        self.inflight.update(ids)

    def ack(self) -> None:
        pool = sorted(self.inflight)
        ids = self.rng.sample(pool, self.rng.randint(0, len(pool)))
        if self.rng.random() < 0.2 and self.seen:  # stale or repeated acks are harmless
            ids += self.rng.sample(sorted(self.seen), min(3, len(self.seen)))
        self.rng.shuffle(ids)
        self.store.ack(ids)
        for i in ids:
            self.live.pop(i, None)
            self.inflight.discard(i)
        self.check()

    def nack(self) -> None:
        pool = sorted(self.inflight)
        ids = self.rng.sample(pool, self.rng.randint(0, min(3, len(pool))))
        self.store.nack(ids)
        for lane in range(3):
            first = min((i for i in ids if self.live[i] == lane), default=None)
            if first is not None:
                self.inflight -= {i for i in self.inflight if self.live[i] == lane and i >= first}
        self.check()

    def rewind(self) -> None:
        self.store.rewind()
        self.inflight.clear()
        self.check()

    def restart(self) -> None:
        self.store.close()
        self.store = self._open()
        self.inflight.clear()
        self.check()

    def crash(self) -> None:
        """A real child process appends in a loop and is SIGKILLed, usually mid-transaction."""
        self.store.close()
        reports = _run_and_kill(
            self.path, self.cfg, self.rng.randrange(1 << 32), self.rng.randint(1, 4), self.rng
        )
        self.store = self._open()
        self.inflight.clear()
        for batch in reports:
            self.returned([i for i, _ in batch], [la for _, la in batch])
        self.check(crashed=True, one_append=False)

    def lose_sidecar(self) -> None:
        self.path.with_name(self.path.name + ".incarnation").unlink(missing_ok=True)
        self.restart()

    def _forget_file(self) -> None:
        self.live.clear()
        self.inflight.clear()
        self.accounted = [0, 0, 0]

    def delete_file(self) -> None:
        self.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._forget_file()
        self.store = self._open()
        self.check()

    def corrupt(self) -> None:
        self.store.close()  # the last close checkpoints the WAL into the file
        size = self.path.stat().st_size
        with open(self.path, "r+b") as f:
            f.seek(4096)  # every page after the header page
            f.write(self.rng.randbytes(size - 4096))
        self._forget_file()
        self.store = self._open()
        assert self.store.quarantined, "a corrupt file is detected at start"
        assert not self.store.quarantined[-1].name.endswith(".sqlite")
        assert self.store.quarantined[-1].exists(), "the corrupt file is kept for inspection"
        self.check()


def _run_and_kill(
    path: Path, cfg: BufferConfig, seed: int, wait_reports: int, rng: random.Random
) -> list[list[tuple[int, int]]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: append forever, report each returned batch
        os.close(r)
        try:
            crng = random.Random(seed)
            store = Store(path, cfg)
            while True:
                n = crng.randint(1, 50)
                lanes = crng.choices(LANES, weights=(5, 10, 85), k=n)
                recs = [Record("child/p", T0_MS, float(k), lane=la) for k, la in enumerate(lanes)]
                ids = store.append(recs)
                line = json.dumps([[i, int(la)] for i, la in zip(ids, lanes, strict=True)])
                os.write(w, line.encode() + b"\n")
        finally:
            os._exit(1)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 30
    while data.count(b"\n") < wait_reports and time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 1.0)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    time.sleep(rng.uniform(0, 0.004))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    lines = data.split(b"\n")[:-1]  # a torn last line was never completely reported
    assert len(lines) >= wait_reports, "the child appended"
    return [[(i, la) for i, la in json.loads(line)] for line in lines]


def test_buffer_matches_the_oracle_through_random_steps_with_crashes(tmp_path: Path) -> None:
    print(f"buffer model: BUFFER_MODEL_SEED={SEED} BUFFER_MODEL_STEPS={STEPS}")
    rng = random.Random(SEED)
    m = Model(tmp_path / "b.sqlite", rng)
    steps: list[tuple[Callable[[], None], int]] = [
        (m.append, 30),
        (m.take, 25),
        (m.ack, 20),
        (m.nack, 5),
        (m.rewind, 3),
        (m.restart, 3),
        (m.crash, 2),
        (m.fill, 2),
        (m.lose_sidecar, 1),
        (m.delete_file, 1),
        (m.corrupt, 1),
    ]
    actions, weights = zip(*steps, strict=True)
    history: list[str] = []
    counts: dict[str, int] = {}
    try:
        for m.step_no in range(STEPS):
            action = rng.choices(actions, weights)[0]
            history.append(action.__name__)
            counts[action.__name__] = counts.get(action.__name__, 0) + 1
            action()
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\n  at step {m.step_no} ({history[-1]}); last steps {history[-12:]}\n"
            f"  reproduce: BUFFER_MODEL_SEED={SEED} BUFFER_MODEL_STEPS={STEPS}"
        ) from exc
    finally:
        m.store.close()
    print(f"buffer model: {counts}, {len(m.seen)} ids")
    assert counts.get("crash", 0) > 0 or STEPS < 200
    assert len(m.seen) > STEPS, "the run stored records"
