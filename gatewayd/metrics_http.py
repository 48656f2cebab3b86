"""The Prometheus text endpoint: `GET /metrics` on a local TCP address, no dependency.

A scraper's bytes can never hurt the daemon: the request head is capped at 8 KiB and
`READ_TIMEOUT_S`, anything but `GET /metrics` gets a 4xx, and every connection is closed after one
response. At most `MAX_CONNECTIONS` are served at once: one more is closed as soon as it is
accepted, so a flood costs the daemon no file descriptors beyond those (it once ran into the 1,024
limit). Refusals
and timeouts are counted (`metrics_http_refused_total{reason}`) and logged only at the first and
every 1000th, never per connection. A failure to bind (port taken) is logged and the daemon runs
on without the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from gatewayd.metrics import Metrics

log = logging.getLogger("gatewayd.metrics")

MAX_HEAD = 8192
MAX_CONNECTIONS = 16  # Prometheus and `gatewayd status` need one or two
READ_TIMEOUT_S = 2.0  # for the whole request head: a local scraper sends it at once
WRITE_TIMEOUT_S = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:9108"` or `"[::1]:9108"` → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    def __init__(
        self, listen: str, render: Callable[[], Awaitable[str]], metrics: Metrics | None = None
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.render = render
        self.metrics = metrics or Metrics()
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._refused = 0
        for reason in ("connection_limit", "read_timeout"):
            self.metrics.inc("metrics_http_refused", 0, reason=reason)

    async def start(self) -> bool:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        except OSError as exc:
            log.error(
                "metrics_listen_failed address=%s:%d error=%s; the gateway runs without it",
                self.host,
                self.port,
                exc.strerror,
            )
            return False
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accepting = asyncio.get_running_loop().create_task(self._accept(sock))
        log.info("metrics_listening address=%s:%d", self.host, self.port)
        return True

    async def stop(self) -> None:
        tasks = [t for t in (self._accepting, *self._serving) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._accepting = None

    async def _accept(self, sock: socket.socket) -> None:
        """Our own accept loop, not asyncio.start_server: a connection over the limit is closed
        right here, before a transport exists, so it holds its descriptor for no loop turn."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE from elsewhere in the process: wait, do not spin
                self._refuse(f"accept_failed_{exc.errno}")
                await asyncio.sleep(0.1)
                continue
            if len(self._serving) >= MAX_CONNECTIONS:
                conn.close()
                self._refuse("connection_limit")
                continue
            task = loop.create_task(self._open(conn))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _open(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEAD)
        except OSError:
            conn.close()
            return
        await self._serve(reader, writer)

    def _refuse(self, reason: str) -> None:
        self.metrics.inc("metrics_http_refused", reason=reason)
        self._refused += 1
        if self._refused == 1 or self._refused % 1000 == 0:
            log.warning(
                "metrics_connection_refused reason=%s count=%d limit=%d",
                reason,
                self._refused,
                MAX_CONNECTIONS,
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                status, body = await asyncio.wait_for(self._answer(reader), READ_TIMEOUT_S)
            except TimeoutError:
                self._refuse("read_timeout")
                return
            ctype = CONTENT_TYPE if status == "200 OK" else "text/plain; charset=utf-8"
            raw = body.encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n".encode()
                + raw
            )
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug in rendering must not take the listener down
            log.exception("metrics_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

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
