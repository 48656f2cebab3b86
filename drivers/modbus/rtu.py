"""Modbus RTU framing on pyserial: a serial port, or a TCP serial gateway (`socket://host:port`).

Invariants:
- one bus, one thread: every request on a port runs on the port's single worker thread, whose
  queue is FIFO, so the unit ids sharing a bus are served in the order they asked (fair
  interleaving) and never overlap;
- quiet time: a request starts no earlier than t3.5 (plus the configured inter-request delay)
  after the end of the previous exchange;
- stale input is discarded BEFORE a request is written, never after: a reply may arrive at once
  (a pty, a USB adapter, a TCP gateway deliver faster than the baud rate). Bytes found waiting
  then are an anomaly: the link waits for line silence first;
- a reply is read by its length (known from the request and the reply's first bytes); inside a
  frame no gap may exceed `gap_s` (1.5 characters on a line, widened to at least t3.5 and to
  the bursts of USB adapters and TCP gateways), else the frame is cut off (`short_reply`);
- after the reply the line must stay quiet for `quiet_s` (t3.5 and a character on a line, a
  quiet period over TCP): a second copy, or any byte sooner than a real line allows, rejects
  the reply. That wait is the quiet time the next request needs anyway. Over TCP a copy may
  come later: before a request whose answer would look like the last one's (same unit,
  function and length) the link waits `copy_guard_s` more, and a copy that comes is dropped;
- a reply is accepted only with a good CRC, the unit id we asked (or one the device is configured
  to answer with), the request's function code (or its exception) and, for a read, the byte
  count asked for. After any anomaly (CRC, unit, function, byte count, cut-off frame, unexpected
  bytes) the link waits until the line has been silent for `gap_s` and discards what came;
- RTU has no transaction id, so a late or duplicate reply is kept from being the answer to a later
  request like this: after a read times out, the next request to that unit is preceded by the same
  read again (a resync) and any answer to it, late or not, is discarded together with everything
  until the line has been silent for the timeout; only then is the new request sent. If the
  resync is not answered, the new request fails `timeout` without being sent. (Reads have no
  side effects; a timed-out write is never repeated, and a late echo cannot match another write.)

Limits (RTU has no transaction id): a copy of a reply sent after the line has been silent for
t3.5 is a frame like any other (on a real bus it collides with our next request); over TCP a copy
later than the guard, or a late reply that comes after a successful resync, would be taken for
the answer to a request of the same shape, unless the true answer follows within `quiet_s`.

Why not pymodbus's serial client (3.16.1): its RTU framer drops a frame with a bad CRC silently
(the caller sees a timeout, not "crc"), it has no transaction id on RTU, so a late reply that
arrives while the next request waits is taken as that request's answer, and it neither waits for
line silence after a timeout nor flushes input before a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import termios
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .pdu import ModbusFault, Reason, check_shape, response_length, unit_accepted

# Pauses allowed inside a frame: a USB adapter's latency timer (16 ms by default on FTDI), a TCP
# gateway's packets. And the quiet period after an RTU-over-TCP reply in which a copy shows.
_USB_GAP_S = 0.02
_TCP_GAP_S = 0.1
_TCP_QUIET_S = 0.01
# Over TCP, before a request whose answer would look like the last one's (same unit, function
# and length), wait this long for a late copy of that answer: it would pass every check.
_TCP_COPY_GUARD_S = 0.03

if TYPE_CHECKING:
    import serial


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC = _crc_table()


def crc16(data: bytes) -> bytes:
    """Modbus CRC-16, low byte first as it goes on the wire."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC[(crc ^ b) & 0xFF]
    return crc.to_bytes(2, "little")


def char_time_s(baud: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    return (1 + bytesize + (parity != "N") + stopbits) / baud


def t35_s(baud: int, char_s: float) -> float:
    # The spec fixes t3.5 at 1.75 ms above 19200 baud, where 3.5 characters get too short.
    return 3.5 * char_s if baud <= 19200 else 0.00175


class RtuLink:
    def __init__(
        self,
        url: str,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        request_delay_s: float = 0.0,
    ) -> None:
        self.url = url
        self._settings = {
            "baudrate": baud,
            "parity": parity,
            "stopbits": stopbits,
            "bytesize": bytesize,
        }
        self.char_s = char_time_s(baud, bytesize, parity, stopbits)
        self.t35 = t35_s(baud, self.char_s)
        self.request_delay_s = request_delay_s
        # Our own serial port: we know when our request has left. Through a TCP gateway we do
        # not (network latency, or a device speaking RTU frames natively on TCP).
        self.on_line = not url.startswith("socket://")
        # USB adapters hand bytes over every 1-16 ms (the latency timer), TCP gateways in
        # packets: a frame may pause that long without being cut off. At least t3.5, so that
        # waiting gap_s for silence after an anomaly also ends the frame.
        self.gap_s = max(self.t35, _USB_GAP_S if self.on_line else _TCP_GAP_S)
        # A copy sent sooner than t3.5 after the reply shows its first byte within t3.5 plus
        # a character on a line; over TCP within a quiet period.
        self.quiet_s = self.t35 + self.char_s if self.on_line else max(self.t35, _TCP_QUIET_S)
        self._port: serial.Serial | None = None
        self._quiet_until = 0.0
        self._resync: dict[int, bytes] = {}  # unit -> the read that timed out
        self._last: tuple[int, bytes] | None = None  # unit and request of the last answer
        self.copy_guard_s = 0.0 if self.on_line else _TCP_COPY_GUARD_S
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rtu")

    async def transact(
        self, unit: int, pdu: bytes, timeout_s: float, accept_units: Collection[int] | str = ()
    ) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._worker, self._transact, unit, pdu, timeout_s, accept_units
        )

    def _open(self) -> serial.Serial:
        if self._port is not None:
            return self._port
        import serial

        try:
            # exclusive: a second program on the same bus would garble both conversations
            extra = {} if not self.on_line else {"exclusive": True}
            self._port = serial.serial_for_url(self.url, timeout=0, **self._settings, **extra)
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise ModbusFault(Reason.DISCONNECTED, open_failure(self.url, exc)) from exc
        # _resync is kept: a late reply may still come on the reopened port (or new connection)
        return self._port

    def _transact(
        self, unit: int, pdu: bytes, timeout_s: float, accept: Collection[int] | str
    ) -> bytes:
        import serial

        port = self._open()
        try:
            time.sleep(max(0.0, self._quiet_until - time.monotonic()))
            if unit in self._resync:
                self._resynchronise(port, unit, timeout_s)
            return self._exchange(port, unit, pdu, timeout_s, accept)
        except (serial.SerialException, OSError, termios.error) as exc:
            self._close_port()
            raise ModbusFault(Reason.DISCONNECTED, str(exc)) from exc
        finally:
            self._quiet_until = time.monotonic() + self.request_delay_s

    def _send(self, port: Any, unit: int, pdu: bytes) -> float:
        """Discard stale input, write the request; the time its last byte is on the line."""
        if self.copy_guard_s and self._last and _same_shape(self._last, unit, pdu):
            _wait_readable(port, time.monotonic() + self.copy_guard_s)
        if _waiting(port):  # something came after the last exchange ended: not ours
            self._settle(port, self.gap_s)
        port.reset_input_buffer()
        frame = bytes([unit]) + pdu
        frame += crc16(frame)
        sent = time.monotonic()
        port.write(frame)
        return sent + len(frame) * self.char_s if self.on_line else sent

    def _resynchronise(self, port: Any, unit: int, timeout_s: float) -> None:
        """Ask the timed-out read again and drop every answer until the line is silent."""
        on_wire = self._send(port, unit, self._resync[unit])
        if not _wait_readable(port, on_wire + timeout_s):
            self._settle(port, self.gap_s)
            raise ModbusFault(Reason.TIMEOUT, "no answer since an earlier timeout")
        if not self._settle(port, timeout_s):
            raise ModbusFault(Reason.BAD_FRAME, "the line does not fall silent")
        del self._resync[unit]

    def _exchange(
        self, port: Any, unit: int, pdu: bytes, timeout_s: float, accept: Collection[int] | str
    ) -> bytes:
        on_wire = self._send(port, unit, pdu)
        buf = bytearray()
        if not _wait_readable(port, on_wire + timeout_s):
            if pdu[0] in (1, 2, 3, 4):
                self._resync[unit] = pdu  # its answer may still come: never take it for another
            self._settle(port, self.gap_s)
            raise ModbusFault(Reason.TIMEOUT)
        try:
            self._read_frame(port, buf, pdu)
            if crc16(bytes(buf[:-2])) != buf[-2:]:
                raise ModbusFault(Reason.CRC)
            if not unit_accepted(unit, buf[0], accept):
                raise ModbusFault(Reason.WRONG_UNIT, f"asked {unit}, got {buf[0]}")
            reply = bytes(buf[1:-2])
            check_shape(pdu, reply)
            if _wait_readable(port, time.monotonic() + self.quiet_s):
                raise ModbusFault(Reason.BAD_FRAME, "more bytes after the reply (a copy, or noise)")
        except ModbusFault:
            self._last = None
            self._settle(port, self.gap_s)
            raise
        self._last = (unit, pdu)
        return reply

    def _read_frame(self, port: Any, buf: bytearray, pdu: bytes) -> None:
        """Read one reply frame into `buf`, by its length; raise if it stops short."""
        self._read_into(port, buf, 3)
        total = 1 + response_length(pdu, bytes(buf[1:3])) + 2
        self._read_into(port, buf, total)

    def _read_into(self, port: Any, buf: bytearray, n: int) -> None:
        # select + os.read on the port's descriptor: pyserial's read would reconfigure the
        # port (tcsetattr) for every new timeout.
        fd = port.fileno()
        while len(buf) < n:
            if not select.select([fd], [], [], self.gap_s)[0]:
                raise ModbusFault(Reason.SHORT_REPLY, f"{len(buf)} bytes, then silence")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise OSError("the port was closed")
            buf += chunk

    def _settle(self, port: Any, silence_s: float) -> bool:
        """Wait until nothing has arrived for `silence_s`, discarding it all; False if the line
        never fell silent (given up after 3 x silence_s, at least a second)."""
        fd = port.fileno()
        give_up = time.monotonic() + max(1.0, 3 * silence_s)
        while select.select([fd], [], [], silence_s)[0]:
            if not os.read(fd, 4096):
                raise OSError("the port was closed")
            if time.monotonic() > give_up:
                return False
        port.reset_input_buffer()
        return True

    def _close_port(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None

    def close(self) -> None:
        """Close the port once the queued requests have run (on the worker, not under it)."""
        self._worker.submit(self._close_port)
        self._worker.shutdown(wait=False)


def _reply_length(pdu: bytes) -> int:
    if pdu[0] in (1, 2, 3, 4):
        count = int.from_bytes(pdu[3:5], "big")
        return 2 * count if pdu[0] in (3, 4) else (count + 7) // 8
    return 4  # a write's echo


def _same_shape(last: tuple[int, bytes], unit: int, pdu: bytes) -> bool:
    """Another request whose answer would have the same unit, function and length."""
    lunit, lpdu = last
    return (
        lunit == unit
        and lpdu != pdu
        and lpdu[0] == pdu[0]
        and _reply_length(lpdu) == _reply_length(pdu)
    )


def _waiting(port: Any) -> bool:
    return bool(select.select([port.fileno()], [], [], 0)[0])


def _wait_readable(port: Any, deadline: float) -> bool:
    return bool(select.select([port.fileno()], [], [], max(0.0, deadline - time.monotonic()))[0])


OPEN_FAILURE = "open "  # how open_failure's texts begin (causes.py passes them on whole)


def open_failure(url: str, exc: BaseException) -> str:
    """Why a port cannot be opened, with the fix: what reaches the log."""
    code = getattr(exc, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"open {url}: permission denied; add the user to the dialout group (or check "
            "DeviceAllow= and SupplementaryGroups= in the systemd unit)"
        )
    if code == errno.ENOENT:
        return f"open {url}: no such device; check serial_port (ls /dev/serial/by-id/)"
    if code == errno.EBUSY or "exclusively" in str(exc) or "lock" in str(exc).lower():
        return f"open {url}: held by another program; stop it (fuser {url})"
    return f"open {url}: {exc}"
