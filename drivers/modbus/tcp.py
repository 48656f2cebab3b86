"""Modbus TCP (MBAP) transport on asyncio streams.

Invariants:
- one request in flight per connection (a lock, FIFO, so devices behind one gateway interleave
  fairly);
- a reply is matched by its transaction id alone: a frame with any other id (a late reply to a
  request that timed out, a duplicate, an id we never sent) is read whole and dropped, however
  many there are, and waiting goes on until the request's own deadline. If only such frames
  came, the fault is `wrong_transaction`, not `timeout`;
- a matched reply is accepted only with protocol id 0 and the unit id we asked (or one the
  device is configured to answer with, `accept_unit_ids`);
- the MBAP length is authoritative: a frame is exactly 6 + length bytes. A body that is not all
  there by the deadline, or that holds the start of another frame (a header of a transaction we
  sent, or more bytes after it that are no header), is a cut-off frame: the connection is
  dropped and the request fails `short_reply`, so a frame is never completed from a later one;
- losing frame sync (protocol id not 0, a length outside 2..254) drops the connection
  (`bad_frame`); so does a socket error or a cancelled request. The connection is opened lazily;
  the next request reconnects with an empty buffer.

pymodbus 3.16.1 is not used here: its framer skips a reply with a wrong unit or transaction id
(the caller only sees a timeout), accepts a reply whose transaction id is 0, and accepts short
replies; we need each of those as its own reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Collection

from .pdu import ModbusFault, Reason, unit_accepted

_MBAP = struct.Struct(">HHHB")
_HEAD = _MBAP.size  # 7: transaction, protocol, length, unit; the length counts the unit byte
# A frame starting inside another's body is recognised by a transaction id among the last
# _RECENT we sent on this connection (ids are never reused sooner: they cycle through 65535).
# Small, so register data rarely looks like a header (if it does: one bad reading, reconnect).
_RECENT = 256


class TcpLink:
    def __init__(self, host: str, port: int, connect_timeout_s: float = 3.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._tid = 0
        self._sent = 0  # transaction ids sent on this connection (for _recent)
        self._buf = bytearray()  # received bytes not yet framed
        self.dropped = 0  # frames that matched no request (late, duplicate, foreign)

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is not None and self._writer is not None and self.connected:
            return self._reader, self._writer
        self.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise ModbusFault(Reason.DISCONNECTED, f"connect: {exc!r}") from exc
        self._reader, self._writer = reader, writer
        self._sent = 0  # ids sent on the old connection cannot arrive on this one
        return reader, writer

    async def transact(
        self, unit: int, pdu: bytes, timeout_s: float, accept_units: Collection[int] | str = ()
    ) -> bytes:
        async with self._lock:
            reader, writer = await self._open()
            self._tid = self._tid % 0xFFFF + 1  # never 0: some stacks treat 0 as "any"
            self._sent += 1
            tid = self._tid
            dropped = self.dropped
            try:
                writer.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
                async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                    runit, body = await self._reply(reader, tid)
            except TimeoutError:
                if self._buf:  # a header or part of a body, never completed
                    self.close()
                    raise ModbusFault(Reason.SHORT_REPLY, "frame cut off") from None
                if self.dropped > dropped:
                    n = self.dropped - dropped
                    raise ModbusFault(
                        Reason.WRONG_TRANSACTION, f"sent {tid}, got {n} frame(s) of other ids"
                    ) from None
                raise ModbusFault(Reason.TIMEOUT) from None
            except OSError as exc:
                self.close()
                raise ModbusFault(Reason.DISCONNECTED, repr(exc)) from exc
            except ModbusFault as exc:
                if exc.kind in (Reason.BAD_FRAME, Reason.SHORT_REPLY):
                    self.close()  # the byte stream can no longer be trusted
                raise
            except asyncio.CancelledError:
                self.close()  # the reply may still come: start the next request afresh
                raise
            if not unit_accepted(unit, runit, accept_units):
                raise ModbusFault(Reason.WRONG_UNIT, f"asked {unit}, got {runit}")
            return body

    async def _reply(self, reader: asyncio.StreamReader, tid: int) -> tuple[int, bytes]:
        """The (unit, PDU) of the frame with our transaction id; other frames are dropped."""
        while True:
            frame = self._frame()
            if frame is None:
                chunk = await reader.read(4096)
                if not chunk:
                    raise OSError("the device closed the connection")
                if len(self._buf) >= _HEAD and self._starts_frame(chunk):
                    # we hold a header whose body is short, and a new frame begins
                    raise ModbusFault(Reason.SHORT_REPLY, "frame cut off by the next one")
                self._buf += chunk
                continue
            rtid, runit, body = frame
            if rtid == tid:
                return runit, body
            self.dropped += 1  # late, duplicated or foreign: never an answer to this request

    def _frame(self) -> tuple[int, int, bytes] | None:
        """The next whole frame from the buffer, None until it is all there."""
        buf = self._buf
        if len(buf) < _HEAD:
            return None
        rtid, pid, length, runit = _MBAP.unpack_from(buf)
        if pid != 0 or not 2 <= length <= 254:
            raise ModbusFault(
                Reason.BAD_FRAME, f"frame sync lost: protocol id {pid}, length {length}"
            )
        end = 6 + length
        if len(buf) < end:
            return None
        body = bytes(buf[_HEAD:end])
        rest = bytes(buf[end : end + _HEAD])
        if self._holds_header(body) or (rest and not self._could_start(rest)):
            raise ModbusFault(Reason.SHORT_REPLY, "a cut-off frame completed by the next one")
        del buf[:end]
        return rtid, runit, body

    def _recent(self, tid: int) -> bool:
        back = (self._tid - tid) % 0xFFFF
        return back < min(self._sent, _RECENT)

    def _could_start(self, head: bytes) -> bool:
        """`head` (up to 7 bytes) can be the start of a frame of ours."""
        if len(head) >= 2 and not self._recent(int.from_bytes(head[:2], "big")):
            return False
        if len(head) >= 4 and head[2:4] != b"\0\0":
            return False
        return len(head) < 6 or 2 <= int.from_bytes(head[4:6], "big") <= 254

    def _starts_frame(self, chunk: bytes) -> bool:
        return len(chunk) >= 6 and self._could_start(chunk[:6])

    def _holds_header(self, body: bytes) -> bool:
        """The body has a header of one of our transactions in it: it was cut and completed."""
        i = body.find(b"\0\0", 2)
        while i != -1:
            if self._could_start(body[i - 2 : i + 4]):  # the length may lie beyond the body
                return True
            i = body.find(b"\0\0", i + 1)
        return False

    def close(self) -> None:
        self._buf.clear()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
