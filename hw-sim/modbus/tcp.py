"""Modbus TCP slave serving one or more unit ids, each with its own DataModel, signals and faults.

An unknown unit id gets no answer at all, like a device that is not on the bus behind a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .datamodel import DataModel
from .faults import Faults
from .signals import Signal


@dataclass
class Feed:
    """Writes a signal into registers at every tick, scaled and encoded as the type says."""

    table: str
    address: int
    signal: Signal
    encode: Callable[[float], list[int]]


class ModbusTcpSlave:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tick_s: float = 0.1) -> None:
        self.host = host
        self.port = port
        self.units: dict[int, DataModel] = {}
        self._faults: dict[int, Faults] = {}
        self.feeds: dict[int, list[Feed]] = {}
        self.tick_s = tick_s
        self.requests = 0
        self._t0 = time.monotonic()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    def unit(self, unit_id: int = 1) -> DataModel:
        return self.units.setdefault(unit_id, DataModel())

    def faults(self, unit_id: int = 1) -> Faults:
        return self._faults.setdefault(unit_id, Faults())

    def feed(
        self,
        unit_id: int,
        table: str,
        address: int,
        signal: Signal,
        encode: Callable[[float], list[int]] | None = None,
    ) -> None:
        self.unit(unit_id)
        enc = encode or (lambda v: [round(v) & 0xFFFF])
        self.feeds.setdefault(unit_id, []).append(Feed(table, address, signal, enc))
        self._apply(unit_id)

    def _apply(self, unit_id: int) -> None:
        t = time.monotonic() - self._t0
        model = self.units[unit_id]
        for f in self.feeds.get(unit_id, ()):
            model.set_words(f.table, f.address, f.encode(f.signal(t)))

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
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit_id = struct.unpack(">HHHB", header)
                if length < 2 or length > 254:
                    return
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                model = self.units.get(unit_id)
                if model is None:
                    continue  # an unknown unit stays silent, like a device that is not there
                reply = model.handle(pdu)
                fault = self._faults.get(unit_id)
                if fault is not None and fault.active():
                    f = Faults(**vars(fault))
                    fault.used()
                    if f.delay_s:
                        await asyncio.sleep(f.delay_s)
                    if f.disconnect:
                        return
                    if f.drop:
                        continue
                    reply = f.mangle(reply)
                    tid = (tid + 1000) & 0xFFFF if f.wrong_transaction else tid
                    unit_id = (unit_id + 1) & 0xFF if f.wrong_unit else unit_id
                writer.write(struct.pack(">HHHB", tid, pid, len(reply) + 1, unit_id) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
