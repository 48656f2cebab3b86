"""A hostile Modbus slave: answers each request with a random mix of valid replies and faults,
and logs the true register values of every reply that carried data, so a test can check every
reading the gateway publishes as good.

Transports: Modbus TCP, RTU on a pty (or a path such as one end of a socat pty pair) and RTU over
TCP. One request is handled at a time per connection, in order, like a real device: a late reply
delays the answers to the requests queued behind it.

Register values change over time and name their address: holding register `a` holds
`(a & 0xFF) << 8 | tick & 0xFF` (input registers the same XOR 0xA5A5), `tick` counting
`tick_s` periods since start. A reply taken for another request's (another address, table or
unit) therefore shows up as a value the slave never sent for that register; a late reply of the
same request carries values that were true when it was sent, and is logged with that time.

Behaviours (`MIX` names them; weights pick one per request):
valid, garbage (random bytes), truncated (a consistent but cut PDU), overlong (bytes after the
PDU), cut (TCP: a header promising more than is sent, then the previous reply again; RTU: half a
frame), wrong_tid (TCP), wrong_unit, wrong_function, exception (codes 1..11), bad_count (byte
count disagreeing with the length), bad_crc (RTU), late (a valid reply after 1.1..3x the
master's timeout), duplicate (the reply twice), burst (two copies in one write, faster than any
line), reset (hang up; TCP and RTU over TCP), silence (no answer).

RTU timing: `pacing="line"` waits as a real line would (request, t3.5, the reply's wire time at
`baud`, delivered in chunks of about 5 ms) and sends a copy right behind the reply, sooner than
the line allows; `pacing="fast"` answers at once, as a USB adapter delivering in bursts does.
Over TCP a copy follows after `copy_gap_s`.

The log is JSON lines: {"t", "request": behaviour} for every request answered, and
{"t", "unit", "fc", "address", "count", "words", "kind"} for every reply that carried register
data (whether or not it was well framed), written before the reply is sent.

    python -m gatewayd_sim hostile --transport tcp --port 5020 --log hostile.jsonl
    python -m gatewayd_sim hostile --transport rtu --pacing line --baud 19200   # a new pty
    python -m gatewayd_sim hostile --transport rtu-tcp --port 4001
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import socket
import struct
import threading
import time
import tty
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ..serial.pty import Pty, wire_time_s
from .rtu import crc16, rtu_frames

MIX: dict[str, float] = {
    "valid": 60,
    "garbage": 2,
    "truncated": 2,
    "overlong": 2,
    "cut": 2,
    "wrong_tid": 2,
    "wrong_unit": 2,
    "wrong_function": 2,
    "exception": 4,
    "bad_count": 2,
    "bad_crc": 2,
    "late": 4,
    "duplicate": 4,
    "burst": 3,
    "reset": 1,
    "silence": 3,
}
TCP_ONLY = ("wrong_tid",)
RTU_ONLY = ("bad_crc",)
_MBAP = struct.Struct(">HHHB")


class HostileSlave:
    def __init__(
        self,
        *,
        unit: int = 1,
        seed: int = 0,
        mix: dict[str, float] | None = None,
        timeout_s: float = 0.3,
        pacing: str = "fast",
        baud: int = 19200,
        tick_s: float = 0.05,
        log_path: str | Path | None = None,
        script: list[str] | None = None,
        late_s: float | None = None,
        copy_gap_s: tuple[float, float] = (0.0, 0.02),
    ) -> None:
        self.unit = unit
        self.rng = random.Random(seed)
        self.mix = dict(MIX if mix is None else mix)
        self.timeout_s = timeout_s
        self.pacing = pacing
        self.baud = baud
        self.tick_s = tick_s
        # Behaviours for the first requests, in order (then the mix): for scripted tests.
        # "a+b" sends both answers, a's then b's (e.g. "wrong_function+valid": a wrong reply,
        # then the right one, as a confused device might).
        self.script = list(script or [])
        self.late_s = late_s  # a fixed lateness instead of 1.1..3x the timeout
        self.copy_gap_s = copy_gap_s  # TCP and RTU over TCP: pause before a duplicate
        self.counts: Counter[str] = Counter()  # behaviour -> requests answered with it
        self.log: list[dict[str, Any]] = []  # the records, when there is no log file
        self._log_file: IO[str] | None = open(log_path, "a") if log_path else None  # noqa: SIM115
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._pty: Pty | None = None
        self._fd = -1
        self.path = ""
        self.port = 0
        self._lock = threading.Lock()

    # -- the register model ------------------------------------------------------------------

    def words(self, fc: int, address: int, count: int) -> list[int]:
        tick = int((time.monotonic() - self._t0) / self.tick_s) & 0xFF
        xor = 0xA5A5 if fc == 4 else 0
        return [(((a & 0xFF) << 8) | tick) ^ xor for a in range(address, address + count)]

    def _record(self, fc: int, address: int, count: int, words: list[int], kind: str) -> None:
        rec = {
            "t": time.time(),
            "unit": self.unit,
            "fc": fc,
            "address": address,
            "count": count,
            "words": words,
            "kind": kind,
        }
        self._write(rec)

    def _write(self, rec: dict[str, Any]) -> None:
        with self._lock:
            if self._log_file is None:
                self.log.append(rec)
            else:
                self._log_file.write(json.dumps(rec) + "\n")
                self._log_file.flush()

    def _answer(self, pdu: bytes, kind: str) -> bytes:
        """The correct response PDU to a request PDU; register data is logged with `kind`."""
        fc = pdu[0] if pdu else 0
        if fc in (3, 4) and len(pdu) >= 5:
            address, count = struct.unpack_from(">HH", pdu, 1)
            if not 1 <= count <= 125 or address + count > 65536:
                return bytes([fc | 0x80, 3])
            words = self.words(fc, address, count)
            self._record(fc, address, count, words, kind)
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words)
        if fc in (1, 2) and len(pdu) >= 5:
            address, count = struct.unpack_from(">HH", pdu, 1)
            return bytes([fc, (count + 7) // 8]) + bytes((count + 7) // 8)
        if fc in (5, 6, 15, 16) and len(pdu) >= 5:
            return pdu[:5]
        return bytes([fc | 0x80, 1])

    def _pick(self, rtu: bool) -> str:
        """The behaviour for one request; logged as {"t", "request": kind}."""
        if self.script:
            kind = self.script.pop(0)
        else:
            skip = TCP_ONLY if rtu else RTU_ONLY
            names = [k for k, w in self.mix.items() if w > 0 and k not in skip]
            kind = self.rng.choices(names, [self.mix[k] for k in names])[0]
        self.counts[kind] += 1
        self._write({"t": time.time(), "request": kind})
        return kind

    def _garble(self, good: bytes, kind: str) -> bytes:
        """The PDU-level faults, applied to a correct response PDU."""
        rng = self.rng
        if kind == "wrong_function":
            return bytes([good[0] % 4 + 1 if good[0] != 4 else 3]) + good[1:]
        if kind == "exception":
            return bytes([good[0] & 0x7F | 0x80, rng.randint(1, 11)])
        if kind == "truncated":
            return good[: rng.randint(1, max(1, len(good) - 1))]
        if kind == "overlong":
            return good + bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 6)))
        if kind == "bad_count" and len(good) >= 2:
            return bytes([good[0], (good[1] + rng.choice([-2, -1, 1, 2])) & 0xFF]) + good[2:]
        return good

    # -- Modbus TCP ----------------------------------------------------------------------------

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> HostileSlave:
        self._listener = socket.create_server((host, port))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept, self._serve_tcp)
        return self

    def start_rtu_tcp(self, host: str = "127.0.0.1", port: int = 0) -> HostileSlave:
        self._listener = socket.create_server((host, port))
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept, self._serve_rtu_sock)
        return self

    def _accept(self, serve: Callable[[socket.socket], None]) -> None:
        assert self._listener is not None
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(serve, conn)

    def _recv_exactly(self, conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            if self._stop.is_set():
                return None
            r, _, _ = select.select([conn], [], [], 0.1)
            if not r:
                continue
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _serve_tcp(self, conn: socket.socket) -> None:
        last = b""  # the previous well-formed reply frame, for `cut`
        with contextlib.suppress(OSError), conn:
            while not self._stop.is_set():
                head = self._recv_exactly(conn, 7)
                if head is None:
                    return
                tid, _pid, length, unit = _MBAP.unpack(head)
                pdu = self._recv_exactly(conn, length - 1)
                if pdu is None or unit != self.unit:
                    continue
                kind = self._pick(rtu=False)
                out = self._tcp_reply(tid, unit, pdu, kind, last)
                if out is None:
                    _reset(conn)
                    return
                for delay, data in out:
                    if delay:
                        time.sleep(delay)
                    conn.sendall(data)
                if kind == "valid":
                    last = out[0][1]

    def _tcp_reply(
        self, tid: int, unit: int, pdu: bytes, kind: str, last: bytes
    ) -> list[tuple[float, bytes]] | None:
        """What to send, as (delay before, bytes) pairs; None to reset the connection."""
        rng = self.rng

        def frame(t: int, u: int, body: bytes) -> bytes:
            return _MBAP.pack(t, 0, len(body) + 1, u) + body

        if kind == "silence":
            return []
        if kind == "reset":
            return None
        if "+" in kind:
            parts = [self._tcp_reply(tid, unit, pdu, k, last) for k in kind.split("+")]
            return [pair for part in parts for pair in part or []]
        if kind == "late":
            time.sleep(self._lateness())
        good = self._answer(pdu, kind)
        if kind == "garbage":
            return [(0, bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 20))))]
        if kind == "cut":
            whole = frame(tid, unit, good)
            part = whole[: rng.randint(_MBAP.size, len(whole) - 1)]
            return [(0, part)] + ([(0.01, last)] if last else [])
        if kind == "wrong_tid":
            return [(0, frame(tid ^ 0x8000, unit, good))]
        if kind == "wrong_unit":
            return [(0, frame(tid, (unit + 1) & 0xFF, good))]
        if kind in ("duplicate", "burst"):
            f = frame(tid, unit, good)
            gap = rng.uniform(*self.copy_gap_s)
            return [(0, f + f)] if kind == "burst" else [(0, f), (gap, f)]
        return [(0, frame(tid, unit, self._garble(good, kind)))]

    # -- Modbus RTU ----------------------------------------------------------------------------

    def start_rtu_pty(self) -> HostileSlave:
        """RTU on a new pty; the gateway opens `path`."""
        self._pty = Pty()
        self.path = self._pty.path
        self._spawn(self._serve_rtu_fd, self._pty.master, False)
        return self

    def start_rtu_path(self, path: str) -> HostileSlave:
        """RTU on an existing tty, e.g. one end of a socat pty pair."""
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self._fd)
        self.path = path
        self._spawn(self._serve_rtu_fd, self._fd, False)
        return self

    def _serve_rtu_sock(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self._serve_rtu_fd(conn.fileno(), True)

    @property
    def _char_s(self) -> float:
        return wire_time_s(1, self.baud)

    @property
    def _t35_s(self) -> float:
        return 3.5 * self._char_s if self.baud <= 19200 else 0.00175

    def _serve_rtu_fd(self, fd: int, is_socket: bool) -> None:
        for frame, _ in rtu_frames(fd, self._stop, is_socket):
            if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:] or frame[0] != self.unit:
                continue
            if not self._rtu_answer(fd, frame, is_socket):
                return

    def _rtu_answer(
        self, fd: int, request: bytes, is_socket: bool, kind: str | None = None
    ) -> bool:
        rng = self.rng
        kind = kind or self._pick(rtu=True)
        if "+" in kind:
            first, rest = kind.split("+", 1)
            self._rtu_answer(fd, request, is_socket, first)
            time.sleep(0.005)  # the second answer after a pause longer than t3.5
            return self._rtu_answer(fd, request, is_socket, rest)
        if kind == "reset" and not is_socket:
            kind = "silence"
        if kind == "silence":
            return True
        if kind == "reset":
            return False
        paced = self.pacing == "line"
        if kind == "late":
            time.sleep(self._lateness())
        pdu = request[1:-2]
        good = self._answer(pdu, kind)

        def frame(body: bytes, unit: int = self.unit) -> bytes:
            f = bytes([unit]) + body
            return f + crc16(f)

        if kind == "garbage":
            out = [bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 20)))]
        elif kind == "cut":
            f = frame(good)
            out = [f[: rng.randint(1, len(f) - 1)]]
        elif kind == "wrong_unit":
            out = [frame(good, (self.unit + 1) & 0xFF)]
        elif kind == "bad_crc":
            f = frame(good)
            out = [f[:-1] + bytes([f[-1] ^ 0xFF])]
        elif kind == "duplicate":
            out = [frame(good), frame(good)]
        elif kind == "burst":
            out = [frame(good) * 2]
        else:
            out = [frame(self._garble(good, kind))]
        if paced:  # the request, then t3.5, then the reply, as a line at `baud` carries them
            time.sleep(wire_time_s(len(request), self.baud) + self._t35_s)
        if paced:  # copies follow at once: sooner than the line allows (it wants t3.5)
            with contextlib.suppress(OSError):
                self._paced_write(fd, out)
            return True
        for i, data in enumerate(out):
            if i and is_socket:  # a TCP gateway repeating a frame
                time.sleep(rng.uniform(*self.copy_gap_s))
            with contextlib.suppress(OSError):
                os.write(fd, data)
        return True

    def _paced_write(self, fd: int, frames: list[bytes]) -> None:
        """Write as a line delivers: the first byte one character time on, then chunks of about
        5 ms, each when its last byte would have arrived. A frame's end is never a chunk's end
        when another frame follows: the next byte is on the line within a character, and a
        scheduler's delay must not make a copy look like a later, legal frame."""
        data = b"".join(frames)
        ends = {sum(len(f) for f in frames[: k + 1]) for k in range(len(frames) - 1)}
        start = time.monotonic()
        step = max(1, int(0.005 / self._char_s))
        i = 0
        while i < len(data):
            n = 1 if i == 0 else step
            if i + n in ends:
                n += 1
            time.sleep(max(0.0, start + (i + n) * self._char_s - time.monotonic()))
            os.write(fd, data[i : i + n])
            i += n

    def _lateness(self) -> float:
        return self.late_s if self.late_s is not None else self.timeout_s * self.rng.uniform(1.1, 3)

    # -- life cycle ----------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="hostile-slave")
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        if self._listener is not None:
            self._listener.close()
        if self._pty is not None:
            self._pty.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self._log_file is not None:
            self._log_file.close()

    def true_words(self) -> dict[tuple[int, int], set[tuple[int, ...]]]:
        """(fc, address) -> every run of words from there the slave ever sent (for checks)."""
        out: dict[tuple[int, int], set[tuple[int, ...]]] = {}
        with self._lock:
            recs = list(self.log)
        for r in recs:
            for i in range(r.get("count", 0)):
                out.setdefault((r["fc"], r["address"] + i), set()).add(tuple(r["words"][i:]))
        return out


def _reset(conn: socket.socket) -> None:
    """Hang up with a TCP reset, as a crashing device does."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
