"""The Prometheus text endpoint: `GET /metrics` on a local TCP address, no dependency.

A scraper's bytes can never hurt the daemon: the request head is capped at 8 KiB and 5 s, anything
but `GET /metrics` gets a 4xx, and every connection is closed after one response. A failure to bind
(port taken) is logged and the daemon runs on without the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("gatewayd.metrics")

MAX_HEAD = 8192
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:9108"` or `"[::1]:9108"` → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(self, listen: str, render: Callable[[], Awaitable[str]]) -> None:
        self.host, self.port = parse_listen(listen)
        self.render = render
        self._server: asyncio.Server | None = None

    async def start(self) -> bool:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD
            )
        except OSError as exc:
            log.error(
                "metrics_listen_failed address=%s:%d error=%s; the gateway runs without it",
                self.host,
                self.port,
                exc.strerror,
            )
            return False
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_listening address=%s:%d", self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._answer(reader), 5.0)
            ctype = CONTENT_TYPE if status == "200 OK" else "text/plain; charset=utf-8"
            raw = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode()
                + raw
            )
            await asyncio.wait_for(writer.drain(), 5.0)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug in rendering must not take the listener down
            log.exception("metrics_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return "431 Request Header Fields Too Large", "request head too large\n"
        if len(head) > MAX_HEAD:
            return "431 Request Header Fields Too Large", "request head too large\n"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", "expected an HTTP request line\n"
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return "405 Method Not Allowed", "only GET\n"
        if path not in (b"/metrics", b"/"):
            return "404 Not Found", "try /metrics\n"
        return "200 OK", await self.render()
