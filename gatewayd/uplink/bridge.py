"""The uplink: buffer → MQTT (QoS 1) → ack-to-buffer on PUBACK.

Invariants:
- a record is acked to the buffer only from a successful PUBACK of the message that carried it
  (MQTT 5: reason code below 0x80); a refused PUBACK ends the session, so the refused records
  come again after the reconnect, in order;
- at most `inflight_window` takes are unacknowledged at once (a take may become a few messages
  when records go to different subfolders or exceed the size limit);
- on any disconnect the in-flight set is forgotten and the buffer rewound, so everything not acked
  is sent again, in order (duplicates only for messages whose PUBACK was lost);
- a PUBACK that does not come within `puback_timeout_s` marks the session dead: a broker that
  stops acknowledging without closing the socket (revoked token) cannot stall delivery forever;
  keepalive pings catch a network that black-holes packets (no RST) after about 2 x keepalive;
- a token refresh stops taking new records, waits for the in-flight ones, then reconnects with a
  new token: nothing is lost and nothing overtakes.

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
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.buffer import Buffer, Entry
from gatewayd.clock import clock_plausible
from gatewayd.config import UplinkConfig
from gatewayd.errors import GatewaydError
from gatewayd.metrics import Metrics

from .backoff import full_jitter
from .device_jwt import load_private_key, mint_jwt
from .payload import Encoder, load_encoder, subfolder_of

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")

MessageHandler = Callable[[str, bytes], None]
# The gateway's state as the daemon sees it (config version, health, counters, buffer depth...).
StateSource = Callable[[], Awaitable[Mapping[str, Any]]]

# CONNACK codes that mean "your credentials": 3.1.1 codes 4 and 5 arrive from paho as 134/135.
_AUTH_REFUSED = {134, 135}
REFRESH_AT = 0.85  # of the token's lifetime
# At refresh, in-flight messages get until shortly before expiry to be acknowledged; keep at
# least this long for it (at most half the life of a very short token), or a loaded gateway
# re-sends them as duplicates after the reconnect.
REFRESH_DRAIN_S = 6.0
STATE_MIN_INTERVAL_S = 1.0
# A session shorter than this does not reset the backoff: a broker that accepts and then drops
# at once must not be hammered at the base delay.
STABLE_SESSION_S = 10.0


class UplinkError(GatewaydError):
    """A connection attempt failed; `reason` says why (refused, unreachable, ...)."""

    def __init__(self, reason: str, auth_refused: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.auth_refused = auth_refused


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        buffer: Buffer,
        metrics: Metrics,
        key_dir: Path = Path("."),
        on_message: MessageHandler | None = None,
        state: StateSource | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Loads the device key and the encoder now, so a bad key stops the daemon at start."""
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.on_message = on_message
        self.state = state
        self.wall_clock = wall_clock  # tokens and the clock sanity check; intervals are monotonic
        self.encode: Encoder = load_encoder(cfg.encoder)
        values = cfg.template_values()
        self.client_id = cfg.client_id.format(**values)
        self.topics = {
            name: getattr(cfg.topics, name).format(**values)
            for name in ("events", "state", "config", "commands", "command_results")
        }
        self._key: Any = None
        self._key_path: Path | None = None
        if cfg.auth.kind == "jwt":
            path = Path(cfg.auth.private_key)
            self._key_path = path if path.is_absolute() else key_dir / path
            # A key that exists but is unsafe or unusable stops the daemon at start; a key not
            # provisioned yet does not: the gateway buffers and `run` retries (supervised).
            if self._key_path.exists():
                self._key = load_private_key(self._key_path, cfg.auth.algorithm)
        self.connected = False
        self.last_error: str | None = None
        self.first_puback_at: float | None = None  # monotonic, of the current session
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._inflight: dict[int, tuple[list[int], float]] = {}  # mid -> (record ids, sent at)
        self._acks: list[int] = []
        self._wake = asyncio.Event()  # a PUBACK arrived, or the session ended
        self._connack: asyncio.Future[Any] | None = None
        self._closed: asyncio.Future[str] | None = None
        self._broken: str | None = None  # why the current session must end (refused PUBACK)
        self._stopping = False
        self._stop_deadline = 0.0
        self._window = cfg.inflight_window  # lowered by an MQTT 5 server's Receive Maximum
        self._misc_task: asyncio.Task[None] | None = None
        self._fd = -1  # the paho socket's descriptor, registered with the loop
        self._expires_at = 0.0  # monotonic, of the current token
        self._next_send = 0.0
        self._last_state: bytes | None = None
        self._next_state = 0.0
        self._rng = random.Random()

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with jittered backoff; returns after `stop()`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self._key_path is not None and self._key is None:
            self._key = load_private_key(self._key_path, self.cfg.auth.algorithm)
        attempt = 0
        reminted = False
        held_streak = 0
        while not self._stopping:
            if self._needs_clock() and not clock_plausible(self.wall_clock()):
                self._set_error("clock_implausible")
                self.metrics.set("uplink_clock_held", 1)
                level = logging.WARNING if held_streak == 0 else logging.DEBUG
                log.log(level, "uplink_held reason=clock_implausible now=%d", self.wall_clock())
                held_streak += 1
                await self._sleep(1.0)
                continue
            if held_streak:
                log.info("uplink_clock_recovered held_checks=%d", held_streak)
                held_streak = 0
                self.metrics.set("uplink_clock_held", 0)
            reconnect_now = False
            started = time.monotonic()
            try:
                await self._connect()
                reminted = False
                reconnect_now = await self._session()
                if time.monotonic() - started >= STABLE_SESSION_S or reconnect_now:
                    attempt = 0
            except UplinkError as exc:
                self._set_error(exc.reason)
                self.metrics.inc("uplink_connect_failures")
                level = logging.WARNING if attempt == 0 else logging.DEBUG
                log.log(
                    level, "uplink_connect_failed reason=%s attempt=%d", exc.reason, attempt + 1
                )
                # A refused token may be a stale one: mint a fresh token once, at once.
                if exc.auth_refused and self.cfg.auth.kind == "jwt" and not reminted:
                    reminted = True
                    self.metrics.inc("uplink_auth_remints")
                    reconnect_now = True
            finally:
                await self._end_session()
            if self._stopping or reconnect_now:
                continue
            delay = full_jitter(attempt, self.cfg.backoff_base_s, self.cfg.backoff_cap_s, self._rng)
            attempt += 1
            self.metrics.inc("uplink_reconnects")
            await self._sleep(delay)

    async def stop(self, drain_s: float = 3.0) -> None:
        """Stop taking new records, wait up to `drain_s` for PUBACKs in flight, disconnect.

        `run()` returns soon after; what is still unacknowledged stays in the buffer.
        """
        self._stop_deadline = time.monotonic() + drain_s
        self._stopping = True
        self._wake.set()
        while self.connected and time.monotonic() < self._stop_deadline + 1.0:
            await asyncio.sleep(0.02)

    def _needs_clock(self) -> bool:
        # A wrong clock makes tokens and certificate validity checks fail; plain MQTT works.
        return self.cfg.auth.kind == "jwt" or self.cfg.tls.enabled

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
            wall = self.wall_clock()
            # iat is a whole second, so the token's life started up to 1 s before now.
            self._expires_at = time.monotonic() + a.lifetime_s - (wall - int(wall))
            return mint_jwt(
                self._key, a.algorithm, a.audience, a.lifetime_s, a.key_id, dict(a.claims), wall
            )
        return a.password if a.kind == "password" else None

    def _make_client(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if self.cfg.protocol == "5":
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
            )
        else:
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
        c.connect_timeout = self.cfg.connect_timeout_s
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
                log.warning(
                    "tls_verification_off host=%s (set by [uplink.tls] verify)", self.cfg.host
                )
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
        try:
            self._client = client = self._make_client()
        except (OSError, ssl.SSLError, ValueError) as exc:  # unreadable CA or client cert
            raise UplinkError(_describe(exc)) from exc
        self._connack = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._broken = None
        self.first_puback_at = None
        try:
            await self._loop.run_in_executor(
                None, client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive_s
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UplinkError(_describe(exc)) from exc
        try:
            reason = await asyncio.wait_for(
                asyncio.shield(self._connack), self.cfg.connect_timeout_s
            )
        except TimeoutError as exc:
            raise UplinkError(f"no CONNACK within {self.cfg.connect_timeout_s:g} s") from exc
        if isinstance(reason, _Closed):
            raise UplinkError(str(reason))
        if reason is not None:
            raise UplinkError(f"refused: {reason}", auth_refused=reason.value in _AUTH_REFUSED)
        self.connected = True
        self.last_error = None
        self._last_state = None
        self._next_state = 0.0
        self.metrics.set("uplink_connected", 1)
        self.metrics.inc("uplink_connects")
        log.info(
            "uplink_connected host=%s port=%d client_id=%s protocol=%s",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.cfg.protocol,
        )
        client.subscribe([(self.topics["config"], 1), (self.topics["commands"], 1)])

    async def _session(self) -> bool:
        """Publish until the connection ends; True when it ended for a token refresh."""
        assert self._client is not None and self._closed is not None
        client, closed = self._client, self._closed
        life = self.cfg.auth.lifetime_s
        refresh_at = (
            self._expires_at - max((1 - REFRESH_AT) * life, min(REFRESH_DRAIN_S, life / 2))
            if self.cfg.auth.kind == "jwt"
            else float("inf")
        )
        appended = self.buffer.appended
        interval = 1.0 / self.cfg.max_messages_per_s
        while not closed.done():
            now = time.monotonic()
            if self._stopping:  # take nothing new; leave once in-flight messages are acked
                await self._flush_acks()
                if not self._inflight or now >= self._stop_deadline:
                    return False
                self._wake.clear()
                await _first([self._wake.wait()], timeout=0.1, stop=closed)
                continue
            if self._broken is not None:
                self._set_error(self._broken)
                return False
            if now >= refresh_at:
                await self._refresh_drain(closed)
                return True
            if self._inflight:
                oldest = next(iter(self._inflight.values()))[1]
                if now - oldest > self.cfg.puback_timeout_s:
                    log.warning("uplink_puback_timeout inflight=%d", len(self._inflight))
                    self.metrics.inc("uplink_puback_timeouts")
                    self._set_error("puback_timeout")
                    return False
            if self.state is not None and now >= self._next_state:
                await self._publish_state(client)
            # Clear before any await, so a PUBACK or append that lands meanwhile is not missed.
            self._wake.clear()
            appended.clear()
            await self._flush_acks()
            if len(self._inflight) >= self._window:
                waiters = [self._wake.wait()]
            elif now < self._next_send:  # rate limit: messages are paced, not burst
                await _first([], timeout=self._next_send - now, stop=closed)
                continue
            else:
                # The take counts body bytes only; _publish_fit splits what the ids overflow.
                entries = await self.buffer.take(
                    self.cfg.batch_max_records, self.cfg.batch_max_bytes
                )
                if entries:
                    sent = self._publish(client, entries)
                    self._next_send = max(self._next_send, now) + interval * sent
                    continue
                waiters = [appended.wait(), self._wake.wait()]
            await _first(waiters, timeout=min(1.0, STATE_MIN_INTERVAL_S), stop=closed)
        return False

    async def _refresh_drain(self, closed: asyncio.Future[str]) -> None:
        """Before reconnecting with a new token, give in-flight messages time to be acked."""
        deadline = min(
            time.monotonic() + min(5.0, self.cfg.puback_timeout_s), self._expires_at - 0.5
        )
        while self._inflight and not closed.done() and time.monotonic() < deadline:
            self._wake.clear()
            await _first([self._wake.wait()], timeout=0.2, stop=closed)
        log.info("uplink_token_refresh inflight_left=%d", len(self._inflight))
        self.metrics.inc("uplink_token_refreshes")

    def publish_json(self, topic_name: str, doc: dict[str, Any]) -> bool:
        """Publish one message outside the buffer (command results); False when offline."""
        if not (self.connected and self._client is not None):
            return False
        info = self._client.publish(
            self.topics[topic_name], json.dumps(doc, allow_nan=False), qos=1
        )
        return info.rc == 0

    def _publish(self, client: mqtt.Client, entries: list[Entry]) -> int:
        """Publish a take as one message per subfolder run (usually one); returns how many."""
        # The common case, kept cheap: one search of all bodies (a newline is in no pattern).
        if '"subfolder":' not in "\n".join([e.body for e in entries]):
            return self._publish_fit(client, self.topics["events"], entries)
        sent = 0
        start = 0
        sub = subfolder_of(entries[0])
        for i in range(1, len(entries) + 1):
            nxt = subfolder_of(entries[i]) if i < len(entries) else None
            if i == len(entries) or nxt != sub:
                topic = self.topics["events"] + (f"/{sub}" if sub else "")
                sent += self._publish_fit(client, topic, entries[start:i])
                start, sub = i, nxt
        return sent

    def _publish_fit(self, client: mqtt.Client, topic: str, entries: list[Entry]) -> int:
        payload = self.encode(entries)
        limit = self.cfg.batch_max_bytes
        if len(payload) > limit and len(entries) > 1:
            # Even chunks just under the limit; each is checked again.
            parts = min(len(entries), -(-len(payload) * 21 // (limit * 20)))
            step = -(-len(entries) // parts)
            return sum(
                self._publish_fit(client, topic, entries[i : i + step])
                for i in range(0, len(entries), step)
            )
        info = client.publish(topic, payload, qos=1)
        if info.rc != 0:  # not connected any more; the records come again after the rewind
            return 0
        self._inflight[info.mid] = ([e.id for e in entries], time.monotonic())
        self.metrics.inc("published_records", len(entries))
        self.metrics.inc("published_messages")
        self.metrics.inc("published_bytes", len(payload))
        return 1

    def state_changed(self) -> None:
        """Something in the state document changed: publish it soon (still at most 1/s)."""
        self._wake.set()

    async def _publish_state(self, client: mqtt.Client) -> None:
        """The gateway state, on change and at most once per second (QoS 1, not buffered)."""
        assert self.state is not None
        self._next_state = time.monotonic() + STATE_MIN_INTERVAL_S
        try:
            doc = await self.state()
            payload = json.dumps(
                doc, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False
            ).encode()
        except Exception:  # a broken state source must not stop delivery
            log.exception("state_source_failed")
            return
        if (
            payload != self._last_state
            and client.publish(self.topics["state"], payload, qos=1).rc == 0
        ):
            self._last_state = payload
            self.metrics.inc("uplink_state_published")

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
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_write()  # the DISCONNECT, before the socket goes
            sock = client.socket()
            self._forget_fd()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        # No callback can run any more (socket closed, reader removed), so every PUBACK that
        # came in is in _acks: acked before the rewind, they are not sent again.
        await self._flush_acks()
        self._inflight.clear()
        await self.buffer.rewind()
        if was_connected:
            log.info("uplink_disconnected reason=%s", self.last_error)

    # -- paho callbacks (loop thread) --------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        # paho does not honour an MQTT 5 server's Receive Maximum; the window does.
        server_max = getattr(props, "ReceiveMaximum", None)
        self._window = min(self.cfg.inflight_window, server_max or self.cfg.inflight_window)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc if rc.is_failure else None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(_Closed(f"closed before CONNACK: {rc}"))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(str(rc))
            if self.connected:
                self._set_error(f"connection lost: {rc}")
        self._wake.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:  # a state message, or a session already forgotten
            return
        if rc.is_failure:  # MQTT 5: the broker refused the message (quota, ACL, size)
            self.metrics.inc("uplink_publish_refused")
            log.warning("uplink_publish_refused reason=%s records=%d", rc, len(entry[0]))
            self._broken = f"publish refused: {rc}"
            self._wake.set()
            return
        if self.first_puback_at is None:
            self.first_puback_at = time.monotonic()
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
        # Register by number: paho may close the socket object (fileno -1) before telling us.
        self._fd = sock.fileno()
        self._in_loop(self._loop.add_reader, self._fd, readable)
        self._in_loop(self._start_misc, client)

    def _start_misc(self, client: Any) -> None:
        assert self._loop is not None
        tick = min(1.0, self.cfg.keepalive_s / 4)

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
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = -1

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        if self._fd >= 0:
            self._in_loop(self._loop.add_writer, self._fd, client.loop_write)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: socket.socket) -> None:
        assert self._loop is not None
        if self._fd >= 0:
            self._in_loop(self._loop.remove_writer, self._fd)


class _Closed:
    """The connection closed before a CONNACK (e.g. a broker that drops bad clients)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


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
