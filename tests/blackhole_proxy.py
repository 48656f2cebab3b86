"""A TCP proxy that can partition the network without closing a socket.

`partition()` makes every connection, open or new, silently drop what it reads in both
directions (no FIN, no RST), as a broken route does; `heal()` lets new connections through again
while the ones that lived through the partition stay dead, as their packets were lost.
`refuse` closes new connections at once (a broker port that is not up yet).
"""

from __future__ import annotations

import asyncio
import contextlib


class BlackHoleProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.refuse = False
        self.dropping = False
        self.epoch = 0  # connections from an older epoch never forward again
        self.dropped_bytes = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def partition(self) -> None:
        self.dropping = True
        self.epoch += 1

    def heal(self) -> None:
        self.dropping = False
        self.epoch += 1

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        epoch = self.epoch
        a = asyncio.ensure_future(self._pump(reader, up_w, epoch))
        b = asyncio.ensure_future(self._pump(up_r, writer, epoch))
        self._tasks.update((a, b))
        try:
            await asyncio.wait([a, b], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (a, b):
                t.cancel()
                self._tasks.discard(t)
            for w in (writer, up_w):
                w.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, epoch: int) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await r.read(65536):
                if self.dropping or epoch != self.epoch:
                    self.dropped_bytes += len(data)
                    continue
                w.write(data)
                await w.drain()
