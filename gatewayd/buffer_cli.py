"""`gatewayd buffer stats | peek | export | purge`: inspect the buffer, also while the daemon runs.

Exit codes: 0 done, 2 bad usage or no readable buffer file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gatewayd.buffer import Entry

LANES = ("alarm", "event", "telemetry")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("buffer", help="inspect, export or purge the store-and-forward buffer")
    where = b.add_mutually_exclusive_group()
    where.add_argument(
        "--config", "-c", default="/etc/gatewayd/gateway.toml", help="daemon configuration"
    )
    where.add_argument("--file", "-f", help="the buffer file itself (instead of --config)")
    act = b.add_subparsers(dest="action", required=True)
    s = act.add_parser("stats", help="depth per lane, bytes, oldest record, evictions, file size")
    s.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p = act.add_parser("peek", help="the next records to be sent, as JSON lines")
    p.add_argument("-n", type=int, default=10, help="how many (default 10)")
    p.add_argument("--lane", choices=LANES, help="only this lane")
    e = act.add_parser("export", help="every record not yet delivered, in delivery order")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--lane", choices=LANES, help="only this lane")
    e.add_argument("--out", "-o", help="file to write (default: standard output)")
    g = act.add_parser("purge", help="delete every record not yet delivered (counted as evicted)")
    g.add_argument("--yes", action="store_true", help="really delete them")


def buffer_path(args: argparse.Namespace) -> Path:
    """The file named by --file, or the one the daemon would use with --config."""
    if args.file:
        return Path(args.file)
    from gatewayd.config import load_file

    cfg = load_file(args.config)
    p = Path(cfg.buffer.path)
    state_dir = Path(os.environ.get("STATE_DIRECTORY") or cfg.state_dir)
    return p if p.is_absolute() else state_dir / p


def run(args: argparse.Namespace) -> int:
    from gatewayd.errors import GatewaydError

    if args.action == "purge" and not args.yes:
        print(
            "error: purge deletes every record not yet delivered to the cloud; add --yes",
            file=sys.stderr,
        )
        return 2
    try:
        return _run(args)
    except GatewaydError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import json

    from gatewayd.buffer import inspect
    from gatewayd.reading import Lane

    path = buffer_path(args)
    db = inspect.open_file(path, write=args.action == "purge")
    try:
        if args.action == "stats":
            info = inspect.summary(db, path)
            print(json.dumps(info, indent=2) if args.json else _stats_text(info))
        elif args.action == "peek":
            lane = Lane[args.lane.upper()] if args.lane else None
            for i, e in enumerate(inspect.entries(db, lane)):
                if i >= args.n:
                    break
                print(_json_line(e.id, e.body))
        elif args.action == "export":
            lane = Lane[args.lane.upper()] if args.lane else None
            if args.out:
                with open(args.out, "w", encoding="utf-8", newline="") as out:
                    n = _export(inspect.entries(db, lane), args.format, out)
                print(f"exported {n} records to {args.out}", file=sys.stderr)
            else:
                _export(inspect.entries(db, lane), args.format, sys.stdout)
        else:
            counts = inspect.purge(db)
            total = sum(counts.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
            print(f"purged {total} records ({detail}); counted as evicted <lane>/purged")
    finally:
        db.close()
    return 0


def _json_line(rid: int, body: str) -> str:
    return f'{{"id":{rid},{body[1:]}'  # the payload's form: the id spliced in front


def _export(entries: Iterable[Entry], fmt: str, out: TextIO) -> int:
    n = 0
    if fmt == "jsonl":
        for e in entries:
            out.write(_json_line(e.id, e.body) + "\n")
            n += 1
        return n
    import csv

    w = csv.writer(out)
    w.writerow(["id", "lane", "point", "ts_ms", "value", "quality", "reason", "subfolder"])
    for e in entries:
        try:
            r = e.record()
        except (ValueError, KeyError, TypeError):  # a damaged body: shown as it is
            w.writerow([e.id, LANES[e.lane], "", "", e.body, "damaged", "", ""])
            n += 1
            continue
        w.writerow(
            [e.id, LANES[e.lane], r.point, r.ts_ms, r.value, r.quality, r.reason, r.subfolder]
        )
        n += 1
    return n


def _stats_text(info: dict[str, object]) -> str:
    from datetime import UTC, datetime

    lanes = info["lanes"]
    assert isinstance(lanes, dict)

    def when(ms: object) -> str:
        if not isinstance(ms, int):
            return "-"
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    lines = [
        f"file         {info['path']}",
        f"file size    {info['file_bytes']} bytes ({info['free_bytes_in_file']} free inside)",
        f"records      {info['depth']} ({info['bytes']} bytes)",
    ]
    for name, v in lanes.items():
        lines.append(f"  {name:<10} {v['depth']:>10}   oldest {when(v['oldest_ts_ms'])}")
    evicted = info["evicted"]
    assert isinstance(evicted, dict)
    lines.append("evicted      " + (", ".join(f"{k} {n}" for k, n in evicted.items()) or "none"))
    if info.get("damaged_kept"):
        lines.append(f"damaged      {info['damaged_kept']} records kept aside (table damaged)")
    corrupt = info.get("corrupt_files")
    if isinstance(corrupt, list) and corrupt:
        lines.append(f"quarantined  {len(corrupt)} corrupt files kept: {', '.join(corrupt)}")
    lines.append(f"incarnation  {info['incarnation']} (last id {info['last_id']})")
    return "\n".join(lines)
