"""A TCP proxy between the gateway and the broker that can refuse or black-hole traffic.

- "up": forwards;
- "down": accepts and closes at once (a broker that is not there);
- "blackhole": stops reading and writing on every connection, old and new, without closing
  anything — what a gateway sees when a network path silently drops packets. Data the peers
  sent waits in the kernel, as TCP would retransmit it, and flows again when healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class FaultProxy:
    def __init__(self, target_port: int, listen_port: int) -> None:
        self.target_port = target_port
        self.listen_port = listen_port
        self.mode = "up"
        self._flowing = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._writers: set[asyncio.StreamWriter] = set()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    def set_mode(self, mode: str) -> None:
        def apply() -> None:
            self.mode = mode
            if mode == "blackhole":
                self._flowing.clear()
            else:
                self._flowing.set()
            if mode == "down":
                for w in list(self._writers):
                    w.close()

        self.loop.call_soon_threadsafe(apply)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.close()
            return
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, uw))
        await asyncio.gather(self._pipe(reader, uw), self._pipe(ur, writer), return_exceptions=True)
        for w in (writer, uw):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        self.set_mode("down")
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
