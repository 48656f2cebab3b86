"""Modbus RTU slave on a pseudo-terminal (or a TCP socket, as an RTU-over-TCP serial gateway).

Several unit ids share the one line, as on an RS-485 bus: a request for an unknown unit, or with
a bad CRC, gets no answer. Every answer is written only after the line would have carried the
request, a t3.5 pause and the answer itself at the configured baud (a pty has no baud rate of its
own), so throughput matches a real line: about 3.2 reads of 125 registers a second at 9600 baud.
Faults as in faults.py; `bad_crc` flips the CRC, `delay_s` beyond the master's timeout is a late
reply, `disconnect` hangs up an RTU-over-TCP client.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

from ..serial.pty import Pty, wire_time_s
from .slave import Slave

_FIXED_REQUEST = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8}


def crc16(data: bytes) -> bytes:
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def request_length(buf: bytes) -> int:
    """Bytes of the request frame starting `buf`, 0 if not yet known."""
    if len(buf) < 2:
        return 0
    if buf[1] in _FIXED_REQUEST:
        return _FIXED_REQUEST[buf[1]]
    if buf[1] in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else 0
    return len(buf)  # unknown function: take it all, its CRC will not match


def rtu_frames(fd: int, stop: threading.Event, is_socket: bool) -> Iterator[tuple[bytes, float]]:
    """The request frames arriving on `fd`, each with the monotonic time its first byte came.

    Frames are cut by `request_length`; a fragment followed by 0.1 s of silence is line noise and
    dropped. Ends when `stop` is set or a socket's peer hangs up; the other end of a tty closing
    is waited out (it may be reopened). A frame that was already waiting when the caller finished
    the previous one counts as heard then.
    """
    buf = bytearray()
    first = last = 0.0
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.05)
        now = time.monotonic()
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                if is_socket:
                    return  # the TCP client went away
                time.sleep(0.01)  # the other end of the tty is closed for now
                continue
            if not buf:
                first = now
            buf += data
            last = now
        elif buf and now - last > 0.1:
            buf.clear()  # a fragment that never completed: line noise
        while (n := request_length(bytes(buf))) and len(buf) >= n:
            frame = bytes(buf[:n])
            del buf[:n]
            yield frame, first
            first = time.monotonic()


class ModbusRtuSlave(Slave):
    def __init__(self, baud: int | None = 9600, bits_per_char: int = 11) -> None:
        super().__init__()
        self.baud = baud
        self.bits_per_char = bits_per_char
        self.pty: Pty | None = None
        self.path = ""  # the pty the gateway opens
        self.port = 0  # or the TCP port, for RTU over TCP
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heard_at: list[float] = []  # monotonic arrival of each valid request (last 1000)

    def wire_s(self, nbytes: int) -> float:
        return wire_time_s(nbytes, self.baud, self.bits_per_char)

    @property
    def t35_s(self) -> float:
        if not self.baud:
            return 0.0
        return 3.5 * self.bits_per_char / self.baud if self.baud <= 19200 else 0.00175

    def start(self) -> ModbusRtuSlave:
        self.pty = Pty()
        self.path = self.pty.path
        return self._run(self._serve, self.pty.master)

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> ModbusRtuSlave:
        self._listener = socket.create_server((host, port))
        self.port = self._listener.getsockname()[1]
        return self._run(self._accept)

    def _run(self, target: object, *args: object) -> ModbusRtuSlave:
        self._thread = threading.Thread(target=target, args=args, daemon=True, name="rtu-slave")  # type: ignore[arg-type]
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.pty is not None:
            self.pty.close()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._serve(conn.fileno())

    def _serve(self, fd: int) -> None:
        tcp = self._listener is not None
        for frame, heard_at in rtu_frames(fd, self._stop, tcp):
            if not self._answer(fd, frame, heard_at) and tcp:
                return  # disconnect fault: drop the TCP client

    def _answer(self, fd: int, frame: bytes, heard_at: float) -> bool:
        """Answer one request frame; False when a disconnect fault says to hang up."""
        if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:]:
            return True  # a slave ignores a frame it cannot trust
        self.heard_at.append(heard_at)
        del self.heard_at[:-1000]
        unit = frame[0]
        model = self.units.get(unit)
        if model is None:
            return True  # nobody at this address: the bus stays silent
        f = self._note(unit)
        if unit in self.feeds:
            self._apply(unit)
        pdu = model.handle(frame[1:-2])
        if f is not None:
            if f.disconnect:
                return False
            if f.drop:
                return True
            pdu = f.mangle(pdu)
            unit = (unit + 1) & 0xFF if f.wrong_unit else unit
        reply = bytes([unit]) + pdu
        reply += crc16(reply)
        if f is not None and f.bad_crc:
            reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
        delay = f.delay_s if f is not None else 0.0
        # The request ends on the line wire_s(len) after its first byte; then silence, then ours.
        at = heard_at + self.wire_s(len(frame)) + self.t35_s + self.wire_s(len(reply)) + delay
        time.sleep(max(0.0, at - time.monotonic()))
        with contextlib.suppress(OSError):
            os.write(fd, reply)
        return True
