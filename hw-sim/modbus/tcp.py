"""Modbus TCP slave serving one or more unit ids, each with its own DataModel, signals and faults.

An unknown unit id gets no answer at all, like a device that is not on the bus behind a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from .slave import Slave


class ModbusTcpSlave(Slave):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tick_s: float = 0.1) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.tick_s = tick_s
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> ModbusTcpSlave:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def _tick(self) -> None:
        while True:
            for unit_id in self.feeds:
                self._apply(unit_id)
            await asyncio.sleep(self.tick_s)

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        for w in list(self._clients):
            w.close()
        for t in list(self._handlers):
            t.cancel()  # a handler may be sleeping in an injected delay
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit_id = struct.unpack(">HHHB", header)
                if length < 2 or length > 254:
                    return
                pdu = await reader.readexactly(length - 1)
                model = self.units.get(unit_id)
                if model is None:
                    continue  # an unknown unit stays silent, like a device that is not there
                f = self._note(unit_id)
                reply = model.handle(pdu)
                if f is not None:
                    if f.delay_s:
                        await asyncio.sleep(f.delay_s)
                    if f.disconnect:
                        return
                    if f.drop:
                        continue
                    reply = f.mangle(reply)
                    tid = (tid + 1000) & 0xFFFF if f.wrong_transaction else tid
                    unit_id = (unit_id + 1) & 0xFF if f.wrong_unit else unit_id
                    if f.cut:
                        head = struct.pack(">HHHB", tid, pid, len(reply) + 1, unit_id)
                        writer.write(head + reply[: len(reply) // 2])
                        continue
                writer.write(struct.pack(">HHHB", tid, pid, len(reply) + 1, unit_id) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
