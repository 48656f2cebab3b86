"""Modbus TCP (MBAP) transport on asyncio streams.

Invariants: one request in flight per connection (a lock, FIFO, so devices behind one gateway
interleave fairly); a reply is accepted only with our transaction id, protocol id 0 and the unit
id we asked; a reply to a request that timed out earlier is recognised by its transaction id and
dropped, so it is never taken as the answer to a later question. The connection is opened lazily
and dropped on any framing or socket error; the next request reconnects.

pymodbus 3.16.1 is not used here: its framer skips a reply with a wrong unit or transaction id
(the caller only sees a timeout), accepts a reply whose transaction id is 0, and accepts short
replies; we need each of those as its own reason code.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import deque

from .pdu import ModbusFault

_MBAP = struct.Struct(">HHHB")


class TcpLink:
    def __init__(self, host: str, port: int, connect_timeout_s: float = 3.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._tid = 0
        self._stale: deque[int] = deque(maxlen=16)  # transaction ids of timed-out requests
        self._midframe = False  # a header was consumed and its body not yet

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
            raise ModbusFault("disconnected", f"connect: {exc!r}") from exc
        self._reader, self._writer = reader, writer
        self._stale.clear()
        return reader, writer

    async def transact(self, unit: int, pdu: bytes, timeout_s: float) -> bytes:
        async with self._lock:
            reader, writer = await self._open()
            self._tid = self._tid % 0xFFFF + 1  # never 0: some stacks treat 0 as "any"
            tid = self._tid
            try:
                writer.write(_MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu)
                async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                    return await self._reply(reader, tid, unit)
            except TimeoutError:
                self._stale.append(tid)
                if self._midframe:  # a header promised more bytes than came: a cut-off reply
                    self.close()
                    raise ModbusFault("short_reply", "frame cut off") from None
                raise ModbusFault("timeout") from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                self.close()
                raise ModbusFault("disconnected", repr(exc)) from exc
            except ModbusFault as exc:
                if exc.reason == "bad_frame":
                    self.close()  # the byte stream can no longer be trusted
                raise
            except asyncio.CancelledError:
                self.close()  # the reply may still come: start the next request afresh
                raise

    async def _reply(self, reader: asyncio.StreamReader, tid: int, unit: int) -> bytes:
        while True:
            # readexactly consumes nothing when cancelled, so a timeout between frames keeps
            # the stream in step; one between header and body does not (_midframe).
            rtid, pid, length, runit = _MBAP.unpack(await reader.readexactly(_MBAP.size))
            if pid != 0 or not 2 <= length <= 254:
                raise ModbusFault("bad_frame", f"protocol id {pid}, length {length}")
            self._midframe = True
            body = await reader.readexactly(length - 1)
            self._midframe = False
            if rtid == tid:
                if runit != unit:
                    raise ModbusFault("wrong_unit", f"asked {unit}, got {runit}")
                return body
            if rtid not in self._stale:
                raise ModbusFault("wrong_transaction", f"sent {tid}, got {rtid}")
            # a late reply to a request we gave up on: drop it and keep waiting

    def close(self) -> None:
        self._midframe = False
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
