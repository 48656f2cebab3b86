"""A gateway process that reports its own memory: `gatewayd <args>` with a probe thread beside it.

    python bench/opcua_probe.py DIR [--trace FRAMES] -- run -c gateway.toml

Invariants:
- The probe imports only the standard library before gatewayd starts, so the process is
  `gatewayd run` plus one sleeping thread; with `--trace` tracemalloc starts before gatewayd is
  imported (every allocation of the daemon is traced, at a CPU and memory cost).
- A request is a file `DIR/<label>.req`; the probe answers with `DIR/<label>.json` (and, when
  tracing, the snapshot `DIR/<label>.snap`), written whole under a temporary name and renamed,
  then removes the request. The bench reads only renamed files.
- The probe only reads, but for a request labelled `trim...` (the bench's last), which first
  hands glibc's free memory back (malloc_trim): what RSS falls by is memory kept, not in use.
  Sqlite figures come from sqlite's own counters (sqlite3_status64, sqlite3_db_status, which
  take sqlite's mutexes) and from a fresh connection of its own for the compiled-in defaults;
  it never runs a statement on the buffer's connection.

Figures: VmRSS and its parts (anon, file, shmem); glibc malloc's bytes in use, free but kept
and mmapped (mallinfo2); pymalloc's arenas and the bytes in their blocks; CPython's allocated
blocks; gc-tracked objects by type; tracemalloc's traced bytes; sqlite's memory and page cache
(in all and per connection); asyncua's pending requests and monitored items; the OPC UA
driver's queued notifications; the event loop's tasks. A log line the daemon writes while
pymalloc's figures are read (a few ms a minute) goes to the probe's scratch file, not the log.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import gc
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

SQLITE_STATUS_MEMORY_USED = 0
SQLITE_STATUS_PAGECACHE_OVERFLOW = 2  # page-cache bytes malloc'd (all of it: no PAGECACHE config)
SQLITE_DBSTATUS_CACHE_USED = 1


def _libsqlite() -> Any:
    """The libsqlite3 the sqlite3 module is linked to (already loaded: dlopen returns it)."""
    name = ctypes.util.find_library("sqlite3") or "libsqlite3.so.0"
    lib = ctypes.CDLL(name)
    lib.sqlite3_status64.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
    ]
    lib.sqlite3_db_status.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    lib.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.sqlite3_db_filename.restype = ctypes.c_char_p
    return lib


def _status64(lib: Any, op: int) -> tuple[int, int]:
    cur, high = ctypes.c_int64(), ctypes.c_int64()
    lib.sqlite3_status64(op, ctypes.byref(cur), ctypes.byref(high), 0)
    return cur.value, high.value


def _connections(lib: Any, objects: list[Any]) -> list[dict[str, Any]]:
    """Each open sqlite3.Connection's file and page-cache bytes.

    CPython 3.11's pysqlite_Connection holds its sqlite3* right after PyObject_HEAD (a layout
    other versions may change); the bench prints the file name sqlite gives back for that
    pointer beside its figure, which shows the pointer is the connection's."""
    out = []
    head = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    for o in objects:
        if type(o) is not sqlite3.Connection:
            continue
        db = ctypes.c_void_p.from_address(id(o) + head).value
        if not db:
            continue  # closed
        name = lib.sqlite3_db_filename(db, b"main")
        cur, high = ctypes.c_int(), ctypes.c_int()
        lib.sqlite3_db_status(
            db, SQLITE_DBSTATUS_CACHE_USED, ctypes.byref(cur), ctypes.byref(high), 0
        )
        out.append({"file": (name or b"").decode(), "cache_used": cur.value})
    return out


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> dict[str, int]:
    """glibc malloc over all its arenas (mallinfo2): in use, free but kept, mmapped."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return {}
    m = libc.mallinfo2()
    return {"malloc_used": m.uordblks, "malloc_free": m.fordblks, "malloc_mmap": m.hblkhd}


def _pymalloc() -> dict[str, int]:
    """pymalloc's arenas and the bytes in their blocks (sys._debugmallocstats, written to fd 2:
    caught in a file for the moment of the call)."""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        key = key.strip()
        if key in ("# arenas allocated current", "# bytes in allocated blocks"):
            found[key] = int(value.strip().replace(",", ""))
    return {
        "pymalloc_arenas": found.get("# arenas allocated current", 0),
        "pymalloc_used": found.get("# bytes in allocated blocks", 0),
    }


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def figures(lib: Any) -> dict[str, Any]:
    objects = gc.get_objects()  # no gc.collect(): the probe must not change what it measures
    types = collections.Counter(type(o).__qualname__ for o in objects)
    out: dict[str, Any] = {"t": time.monotonic(), **_status()}
    out["py_blocks"] = sys.getallocatedblocks()
    out.update(_glibc())
    out.update(_pymalloc())
    out["gc_objects"] = len(objects)
    out["types"] = dict(types)
    if tracemalloc.is_tracing():
        out["traced"], out["traced_peak"] = tracemalloc.get_traced_memory()
        out["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
    out["sqlite_memory"], out["sqlite_memory_high"] = _status64(lib, SQLITE_STATUS_MEMORY_USED)
    out["sqlite_pagecache"], _ = _status64(lib, SQLITE_STATUS_PAGECACHE_OVERFLOW)
    out["sqlite_connections"] = _connections(lib, objects)
    pending = items = queued = 0
    tasks = 0
    for o in objects:
        name = type(o).__qualname__
        if name == "UaClient":
            pending += len(getattr(getattr(o, "protocol", None), "_callbackmap", {}) or {})
        elif name == "Subscription" and hasattr(o, "_monitored_items"):
            items += len(o._monitored_items)
        elif name == "OpcUaDriver":
            queued += o._queued
        elif isinstance(o, asyncio.BaseEventLoop) and o.is_running():
            tasks += len(asyncio.all_tasks(o))
    out.update(ua_pending=pending, ua_items=items, driver_queued=queued, tasks=tasks)
    del objects
    return out


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def serve(work: Path) -> None:
    lib = _libsqlite()
    with sqlite3.connect(":memory:") as c:  # the compiled-in defaults the buffer's file inherits
        defaults = {
            "cache_size": c.execute("PRAGMA cache_size").fetchone()[0],
            "page_size": c.execute("PRAGMA page_size").fetchone()[0],
        }
    c.close()
    _write(work / "defaults.json", json.dumps(defaults).encode())
    while True:
        for req in sorted(work.glob("*.req")):
            label = req.stem
            if label.startswith("trim"):  # the one request that changes the process: last
                ctypes.CDLL(None).malloc_trim(0)
            if tracemalloc.is_tracing():
                snap = tracemalloc.take_snapshot()
                snap.dump(str(work / f"{label}.snap.tmp"))
                (work / f"{label}.snap.tmp").rename(work / f"{label}.snap")
            _write(work / f"{label}.json", json.dumps(figures(lib)).encode())
            req.unlink()
        time.sleep(0.2)


def main() -> None:
    argv = sys.argv[1:]
    work, rest = Path(argv[0]), argv[1:]
    if rest[:1] == ["--trace"]:
        tracemalloc.start(int(rest[1]))
        rest = rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    threading.Thread(target=serve, args=(work,), daemon=True, name="probe").start()
    from gatewayd.cli import main as gatewayd_main

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(gatewayd_main(rest))


if __name__ == "__main__":
    main()
