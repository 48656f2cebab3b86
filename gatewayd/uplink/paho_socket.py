"""paho's socket driven from the asyncio loop (add_reader/add_writer, as aiomqtt does).

Invariants:
- every paho callback runs on the loop thread: paho reads from the loop's reader, writes from
  its writer and pings from a loop task; only the blocking connect() runs in an executor, and
  the socket callbacks it triggers hop back to the loop with call_soon_threadsafe;
- the reader and writer are registered by descriptor number, and removed before the socket is
  closed, so a descriptor number reused by the next connection is never watched twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any


class SocketAdapter:
    """Attach one paho client at a time to the running loop; `close` detaches and closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keepalive_s: float) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._tick = min(1.0, keepalive_s / 4)
        self._fd = -1  # the paho socket's descriptor, registered with the loop
        self._misc_task: asyncio.Task[None] | None = None

    def attach(self, client: Any) -> None:
        """Install the socket callbacks; call before `client.connect`."""
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def close(self, client: Any) -> None:
        """Send DISCONNECT if possible, then close the socket; no paho callback runs after."""
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_write()  # the DISCONNECT, before the socket goes
        sock = client.socket()
        self._forget_fd()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        def readable() -> None:
            client.loop_read()
            # TLS may hold decrypted bytes that select() cannot see.
            while isinstance(sock, ssl.SSLSocket) and sock.pending() and client.socket() is sock:
                client.loop_read()

        # Register by number: paho may close the socket object (fileno -1) before telling us.
        self._fd = sock.fileno()
        self._in_loop(self._loop.add_reader, self._fd, readable)
        self._in_loop(self._start_misc, client)

    def _start_misc(self, client: Any) -> None:
        tick = self._tick

        async def misc() -> None:  # keepalive pings, and closing a connection that went silent
            while client.socket() is not None:
                client.loop_misc()
                await asyncio.sleep(tick)

        if self._misc_task is not None:
            self._misc_task.cancel()
        self._misc_task = self._loop.create_task(misc())

    def _on_socket_close(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        self._in_loop(self._forget_fd)

    def _forget_fd(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        if self._fd >= 0:
            self._in_loop(self._loop.add_writer, self._fd, client.loop_write)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        if self._fd >= 0:
            self._in_loop(self._loop.remove_writer, self._fd)
