"""Modbus RTU framing on pyserial: a serial port, or a TCP serial gateway (`socket://host:port`).

Invariants:
- one bus, one thread: every request on a port runs on the port's single worker thread, whose
  queue is FIFO, so the unit ids sharing a bus are served in the order they asked (fair
  interleaving) and never overlap;
- quiet time: a request starts no earlier than t3.5 (plus the configured inter-request delay)
  after the end of the previous exchange;
- nothing that arrives before our request can have been transmitted is taken as its answer
  (a slave cannot reply before it has heard the request): input is flushed at that moment;
- after a timeout, a CRC error or a cut-off frame, we wait until the line has been silent for
  the timeout (bounded) and flush input, so a late reply is never taken as the next answer;
- a reply is accepted only with a good CRC and the unit id we asked; pdu.py checks the rest.

Why not pymodbus's serial client (3.16.1): its RTU framer drops a frame with a bad CRC silently
(the caller sees a timeout, not "crc"), it has no transaction id on RTU, so a late reply that
arrives while the next request waits is taken as that request's answer, and it neither waits for
line silence after a timeout nor flushes input before a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .pdu import ModbusFault, response_length

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
        self._port: serial.Serial | None = None
        self._quiet_until = 0.0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="rtu")

    async def transact(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._transact, unit, pdu, timeout_s)

    def _open(self) -> serial.Serial:
        if self._port is not None:
            return self._port
        import serial

        try:
            # exclusive: a second program on the same bus would garble both conversations
            extra = {} if not self.on_line else {"exclusive": True}
            self._port = serial.serial_for_url(self.url, timeout=0, **self._settings, **extra)
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            raise ModbusFault("disconnected", f"open {self.url}: {exc}") from exc
        return self._port

    def _transact(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        import serial

        port = self._open()
        try:
            return self._exchange(port, unit, pdu, timeout_s)
        except (serial.SerialException, OSError, termios.error) as exc:
            self._close_port()
            raise ModbusFault("disconnected", str(exc)) from exc
        finally:
            self._quiet_until = time.monotonic() + self.t35 + self.request_delay_s

    def _exchange(self, port: serial.Serial, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        time.sleep(max(0.0, self._quiet_until - time.monotonic()))
        frame = bytes([unit]) + pdu
        frame += crc16(frame)
        port.reset_input_buffer()
        sent = time.monotonic()
        port.write(frame)
        on_wire = sent
        if self.on_line:
            on_wire += len(frame) * self.char_s
            time.sleep(max(0.0, on_wire - time.monotonic()))
            port.reset_input_buffer()  # echo, noise, or a stray late reply: not an answer to us
        deadline = on_wire + timeout_s
        buf = bytearray()
        if not self._read_into(port, buf, 3, deadline):
            self._settle(port, timeout_s)
            raise ModbusFault("short_reply" if buf else "timeout", f"{len(buf)} bytes")
        total = 1 + response_length(pdu, bytes(buf[1:3])) + 2
        if not self._read_into(port, buf, total, deadline):
            self._settle(port, timeout_s)
            raise ModbusFault("short_reply", f"{len(buf)} of {total} bytes")
        if crc16(bytes(buf[:-2])) != buf[-2:]:
            self._settle(port, 10 * self.t35)
            raise ModbusFault("crc")
        if buf[0] != unit:
            self._settle(port, 10 * self.t35)
            raise ModbusFault("wrong_unit", f"asked {unit}, got {buf[0]}")
        return bytes(buf[1:-2])

    @staticmethod
    def _read_into(port: Any, buf: bytearray, n: int, deadline: float) -> bool:
        # select + os.read on the port's descriptor: pyserial's read would reconfigure the
        # port (tcsetattr) for every new timeout.
        fd = port.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return False
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise OSError("the port was closed")
            buf += chunk
        return True

    def _settle(self, port: Any, silence_s: float) -> None:
        """Wait until nothing has arrived for `silence_s` (at most 3 of them), then flush."""
        fd = port.fileno()
        give_up = time.monotonic() + 3 * silence_s
        while time.monotonic() < give_up and select.select([fd], [], [], silence_s)[0]:
            if not os.read(fd, 4096):
                break
        port.reset_input_buffer()

    def _close_port(self) -> None:
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None

    def close(self) -> None:
        """Close the port once the queued requests have run (on the worker, not under it)."""
        self._worker.submit(self._close_port)
        self._worker.shutdown(wait=False)
