"""The uplink: buffer → MQTT (QoS 1) → ack-to-buffer on PUBACK.

Invariants:
- a record is acked to the buffer only from the PUBACK of the message that carried it;
- at most `inflight_window` messages are unacknowledged at once;
- on any disconnect the in-flight set is forgotten and the buffer rewound, so everything not acked
  is sent again, in order (duplicates only for messages whose PUBACK was lost);
- a PUBACK that does not come within `puback_timeout_s` marks the session dead: a broker that
  stops acknowledging without closing the socket (revoked token) cannot stall delivery forever.

paho's socket is driven from the asyncio loop (add_reader/add_writer, as aiomqtt does), so every
paho callback runs on the loop thread; only the blocking connect() runs in an executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.buffer import Buffer, Entry
from gatewayd.clock import clock_plausible
from gatewayd.config import UplinkConfig
from gatewayd.errors import GatewaydError
from gatewayd.metrics import Metrics

from .backoff import full_jitter
from .device_jwt import load_private_key, mint_jwt
from .payload import encode_json

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")

MessageHandler = Callable[[str, bytes], None]


class UplinkError(GatewaydError):
    """A connection attempt failed; `reason` says why (refused, unreachable, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        buffer: Buffer,
        metrics: Metrics,
        key_dir: Path = Path("."),
        on_message: MessageHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.key_dir = key_dir
        self.on_message = on_message
        values = cfg.template_values()
        self.client_id = cfg.client_id.format(**values)
        self.topics = {
            name: getattr(cfg.topics, name).format(**values)
            for name in ("events", "state", "config", "commands", "command_results")
        }
        self.connected = False
        self.last_error: str | None = None
        self._key: Any = None
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inflight: dict[int, tuple[list[int], float]] = {}  # mid -> (record ids, sent at)
        self._acks: list[int] = []
        self._wake = asyncio.Event()  # a PUBACK arrived, or the session ended
        self._connack: asyncio.Future[Any] | None = None
        self._closed: asyncio.Future[str] | None = None
        self._stopping = False
        self._misc_task: asyncio.Task[None] | None = None
        self._state: dict[str, Any] = {}  # the gateway state document, re-sent on every connect
        self._state_dirty = False
        self._rng = random.Random()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with jittered backoff; returns after `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.cfg.auth.kind == "jwt":
            path = Path(self.cfg.auth.private_key)
            self._key = load_private_key(
                path if path.is_absolute() else self.key_dir / path, self.cfg.auth.algorithm
            )
        attempt = 0
        while not self._stopping:
            if not clock_plausible():
                self._set_error("clock_implausible")
                log.warning("uplink_held reason=clock_implausible now=%d", int(time.time()))
                await self._sleep(5.0)
                continue
            reconnect_now = False
            try:
                await self._connect()
                attempt = 0
                reconnect_now = await self._session()
            except UplinkError as exc:
                self._set_error(exc.reason)
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                log.log(
                    level, "uplink_connect_failed reason=%s attempt=%d", exc.reason, attempt + 1
                )
            finally:
                await self._end_session()
            if self._stopping or reconnect_now:
                continue
            delay = full_jitter(attempt, self.cfg.backoff_base_s, self.cfg.backoff_cap_s, self._rng)
            attempt += 1
            self.metrics.inc("uplink_reconnects")
            await self._sleep(delay)

    async def stop(self, drain_s: float = 3.0) -> None:
        """Stop taking new records, wait up to `drain_s` for PUBACKs in flight, disconnect."""
        self._stopping = True
        deadline = time.monotonic() + drain_s
        while self._inflight and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._flush_acks()
        self._wake.set()
        if self._client is not None:
            self._client.disconnect()

    def _set_error(self, reason: str) -> None:
        self.last_error = reason
        self.metrics.set("uplink_connected", 0)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # -- connection ------------------------------------------------------------------------

    def _password(self) -> str | None:
        a = self.cfg.auth
        if a.kind == "jwt":
            self.metrics.inc("uplink_tokens_minted")
            return mint_jwt(self._key, a.algorithm, a.audience, a.lifetime_s, a.key_id)
        return a.password if a.kind == "password" else None

    def _make_client(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        c.max_inflight_messages_set(self.cfg.inflight_window)
        c.max_queued_messages_set(0)
        if self.cfg.auth.kind != "none":
            c.username_pw_set(self.cfg.auth.username, self._password())
        tls = self.cfg.tls
        if tls.enabled:
            c.tls_set(
                ca_certs=tls.ca_file,
                certfile=tls.cert_file,
                keyfile=tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
            )
            if not tls.verify:
                c.tls_insecure_set(True)
                log.warning("tls_verification_off host=%s", self.cfg.host)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_socket_open = self._on_socket_open  # type: ignore[assignment]
        c.on_socket_close = self._on_socket_close  # type: ignore[assignment]
        c.on_socket_register_write = self._on_socket_register_write  # type: ignore[assignment]
        c.on_socket_unregister_write = self._on_socket_unregister_write  # type: ignore[assignment]
        return c

    async def _connect(self) -> None:
        assert self._loop is not None
        self._client = client = self._make_client()
        self._connack = self._loop.create_future()
        self._closed = self._loop.create_future()
        try:
            await self._loop.run_in_executor(
                None, client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive_s
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UplinkError(_describe(exc)) from exc
        try:
            reason = await asyncio.wait_for(asyncio.shield(self._connack), 10.0)
        except TimeoutError as exc:
            raise UplinkError("no CONNACK within 10 s") from exc
        if reason is not None:
            raise UplinkError(reason)
        self.connected = True
        self.last_error = None
        self.metrics.set("uplink_connected", 1)
        self.metrics.inc("uplink_connects")
        log.info(
            "uplink_connected host=%s port=%d client_id=%s",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
        )
        client.subscribe([(self.topics["config"], 1), (self.topics["commands"], 1)])
        self._state_dirty = bool(self._state)
        self._send_state()

    async def _session(self) -> bool:
        """Publish until the connection ends; True when it ended for a token refresh."""
        assert self._client is not None and self._closed is not None
        client, closed = self._client, self._closed
        refresh_at = (
            time.monotonic() + 0.85 * self.cfg.auth.lifetime_s
            if self.cfg.auth.kind == "jwt"
            else float("inf")
        )
        appended = self.buffer.appended
        while not closed.done() and not self._stopping:
            now = time.monotonic()
            if now >= refresh_at:
                await self._refresh_drain(closed)
                return True
            if (
                self._inflight
                and now - min(t for _, t in self._inflight.values()) > self.cfg.puback_timeout_s
            ):
                log.warning("uplink_puback_timeout inflight=%d", len(self._inflight))
                self.metrics.inc("uplink_puback_timeouts")
                self._set_error("puback_timeout")
                return False
            # Clear before any await, so a PUBACK or append that lands meanwhile is not missed.
            self._wake.clear()
            appended.clear()
            await self._flush_acks()
            if len(self._inflight) < self.cfg.inflight_window:
                entries = await self.buffer.take(
                    self.cfg.batch_max_records, self.cfg.batch_max_bytes
                )
                if entries:
                    self._publish(client, entries)
                    continue
                waiters = [appended.wait(), self._wake.wait()]
            else:
                waiters = [self._wake.wait()]
            await _first(waiters, timeout=1.0, stop=closed)
        return False

    async def _refresh_drain(self, closed: asyncio.Future[str]) -> None:
        """Before reconnecting with a new token, give in-flight messages a moment to be acked."""
        deadline = time.monotonic() + 5.0
        while self._inflight and not closed.done() and time.monotonic() < deadline:
            self._wake.clear()
            await _first([self._wake.wait()], timeout=0.2, stop=closed)
        log.info("uplink_token_refresh")
        self.metrics.inc("uplink_token_refreshes")

    def publish_state(self, doc: dict[str, Any]) -> None:
        """Merge `doc` into the state document and publish it now if connected, else on connect."""
        self._state.update(doc)
        self._state_dirty = True
        self._send_state()

    def _send_state(self) -> None:
        if self._state_dirty and self.connected and self._client is not None:
            self._client.publish(self.topics["state"], json.dumps(self._state), qos=1)
            self._state_dirty = False

    def publish_json(self, topic_name: str, doc: dict[str, Any]) -> bool:
        """Publish one message outside the buffer (command results); False when offline."""
        if not (self.connected and self._client is not None):
            return False
        info = self._client.publish(self.topics[topic_name], json.dumps(doc), qos=1)
        return info.rc == 0

    def _publish(self, client: mqtt.Client, entries: list[Entry]) -> None:
        info = client.publish(self.topics["events"], encode_json(entries), qos=1)
        if info.rc != 0:  # not connected any more; the records stay in the buffer
            return
        self._inflight[info.mid] = ([e.id for e in entries], time.monotonic())
        self.metrics.inc("published_records", len(entries))
        self.metrics.inc("published_messages")

    async def _flush_acks(self) -> None:
        if self._acks:
            ids, self._acks = self._acks, []
            await self.buffer.ack(ids)
            self.metrics.inc("acked_records", len(ids))

    async def _end_session(self) -> None:
        client, self._client = self._client, None
        was_connected = self.connected
        self.connected = False
        self.metrics.set("uplink_connected", 0)
        await self._flush_acks()
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            sock = client.socket()
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
                with contextlib.suppress(OSError):
                    sock.close()
        self._inflight.clear()
        await self.buffer.rewind()
        if was_connected:
            log.info("uplink_disconnected")

    # -- paho callbacks (loop thread) --------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(None if not rc.is_failure else f"refused: {rc}")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(f"closed before CONNACK: {rc}")
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(str(rc))
        self._wake.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if getattr(rc, "is_failure", False):  # MQTT 5: the broker refused the message
            self.metrics.inc("uplink_publish_refused")
            log.warning("uplink_publish_refused reason=%s", rc)
            return
        self._acks.extend(entry[0])
        self._wake.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.metrics.inc("uplink_messages_received")
        if self.on_message is not None:
            try:
                self.on_message(msg.topic, msg.payload)
            except Exception:  # a peer's bytes must never kill the uplink
                log.exception("message_handler_failed topic=%s", msg.topic)

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
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

        assert self._loop is not None
        self._in_loop(self._loop.add_reader, sock, readable)
        self._in_loop(self._start_misc, client)

    def _start_misc(self, client: Any) -> None:
        assert self._loop is not None

        async def misc() -> None:  # keepalive pings and paho's own timeouts
            while client.socket() is not None:
                client.loop_misc()
                await asyncio.sleep(1.0)

        self._misc_task = self._loop.create_task(misc())

    def _on_socket_close(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.remove_reader, sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.add_writer, sock, client.loop_write)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.remove_writer, sock)


async def _first(waiters: list[Any], timeout: float, stop: asyncio.Future[str]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waiters]
    try:
        await asyncio.wait([*tasks, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS verification failed: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"
