"""`gatewayd buffer ...` as a real process, on a file that a live Store (the daemon) holds open."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.buffer import Store
from gatewayd.config import BufferConfig
from gatewayd.reading import Lane, Quality, Record


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "buffer", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Store:
    s = Store(tmp_path / "buffer.sqlite", BufferConfig())
    s.append([Record("plc/t", 1_764_000_000_000 + i, 20.0 + i) for i in range(5)])
    s.append([Record("plc/hi", 1_764_000_000_100, True, lane=Lane.ALARM)])
    s.append([Record("plc/x", 1_764_000_000_200, None, Quality.BAD, "timeout", Lane.EVENT)])
    return s


def test_stats_reads_a_buffer_the_daemon_holds_open(daemon: Store) -> None:
    r = cli("--file", str(daemon.path), "stats", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["depth"] == 7 and info["bytes"] == daemon.snapshot().bytes
    assert {k: v["depth"] for k, v in info["lanes"].items()} == {
        "alarm": 1,
        "event": 1,
        "telemetry": 5,
    }
    assert info["incarnation"] == daemon.incarnation


def test_peek_shows_the_next_records_in_delivery_order_with_ids(daemon: Store) -> None:
    r = cli("--file", str(daemon.path), "peek", "-n", "3")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["point"] for x in lines] == ["plc/hi", "plc/x", "plc/t"]
    assert [x["id"] for x in lines] == [e.id for e in daemon.take(3, 1 << 20)]
    r = cli("--file", str(daemon.path), "peek", "--lane", "telemetry", "-n", "2")
    assert [json.loads(x)["value"] for x in r.stdout.splitlines()] == [20.0, 21.0]


def test_export_csv_and_jsonl_hold_every_pending_record(daemon: Store, tmp_path: Path) -> None:
    r = cli("--file", str(daemon.path), "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 7 and rows[1]["reason"] == "timeout" and rows[1]["lane"] == "event"
    out = tmp_path / "x.jsonl"
    r = cli("--file", str(daemon.path), "export", "--format", "jsonl", "--out", str(out))
    assert r.returncode == 0 and "exported 7 records" in r.stderr
    assert len(out.read_text().splitlines()) == 7


def test_purge_needs_yes_and_the_running_store_notices_it(daemon: Store) -> None:
    taken = daemon.take(2, 1 << 20)
    r = cli("--file", str(daemon.path), "purge")
    assert r.returncode == 2 and "--yes" in r.stderr
    assert daemon.snapshot().depth == 7
    r = cli("--file", str(daemon.path), "purge", "--yes")
    assert r.returncode == 0 and "purged 7 records" in r.stdout
    stats = daemon.snapshot()
    assert stats.depth == 0 and stats.bytes == 0
    assert stats.evicted == {"alarm/purged": 1, "event/purged": 1, "telemetry/purged": 5}
    assert daemon.ack([e.id for e in taken]) == 0
    new = daemon.append([Record("plc/t", 1_764_000_001_000, 1.0)])
    assert new[0] > max(e.id for e in taken) and daemon.snapshot().depth == 1


def test_missing_buffer_file_is_a_clear_error(tmp_path: Path) -> None:
    r = cli("--file", str(tmp_path / "nope.sqlite"), "stats")
    assert r.returncode == 2 and "nope.sqlite: no buffer file here" in r.stderr


def test_damaged_records_are_shown_not_fatal_and_counted_in_stats(daemon: Store) -> None:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(daemon.path)) as db, db:
        ids = [i for (i,) in db.execute("SELECT id FROM records WHERE lane = 2 ORDER BY id")]
        db.execute(  # one invalid UTF-8 byte, and a body that is not JSON
            "UPDATE records SET body = CAST(? AS TEXT) WHERE id = ?",
            (b'{"point":"plc/\xfft","ts":1,"value":1,"quality":"good"}', ids[0]),
        )
        db.execute("UPDATE records SET body = '{\"point\":' WHERE id = ?", (ids[1],))
    for args in (("peek", "-n", "10"), ("export", "--format", "csv"), ("export",)):
        r = cli("--file", str(daemon.path), *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (args, r.stderr)
    assert len(daemon.take(100, 1 << 20)) == 5, "the daemon sets both aside and sends the rest"
    r = cli("--file", str(daemon.path), "stats")
    assert r.returncode == 0, r.stderr
    assert "telemetry/damaged 2" in r.stdout
    assert "damaged      2 records kept aside" in r.stdout
    info = json.loads(cli("--file", str(daemon.path), "stats", "--json").stdout)
    assert info["damaged_kept"] == 2 and info["evicted"] == {"telemetry/damaged": 2}
