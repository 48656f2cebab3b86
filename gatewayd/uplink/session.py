"""The session loop: connect, publish from the buffer, reconnect with jittered backoff.

Invariants:
- a refused PUBACK ends the session, so the refused records come again after the reconnect, in
  order (the window acks only accepted ones; see window.py);
- on any disconnect the in-flight set is forgotten and the buffer rewound, so everything not acked
  is sent again, in order; PUBACKs that arrived before the socket closed are acked first;
- a PUBACK that does not come within `puback_timeout_s` marks the session dead: a broker that
  stops acknowledging without closing the socket (revoked token) cannot stall delivery forever;
  keepalive pings catch a network that black-holes packets (no RST) after about 2 x keepalive;
- a credential refresh (credentials.py) stops taking new records, waits for the in-flight ones,
  then reconnects with a new token: nothing is lost and nothing overtakes;
- every SUBACK return code is checked: a refused subscription is logged at WARNING with its topic
  and the broker's code (once per topic and code; repeats at DEBUG) and asked for again, from
  5 s doubling to 60 s, for as long as the session lives; a session the broker closes
  before answering SUBSCRIBE, or after refusing it and before any PUBACK, is a failure that
  names the topics, not a recovery;
- with [uplink.presence] on, the broker holds a retained "online" while a session lives and
  "offline" after it: published at a clean stop, and the connection's last will otherwise;
- under a profile with an idle limit (`max_idle_s`, ClearBlade: 20 minutes whatever the
  keepalive, PINGREQs not counted), a session silent for half of it publishes its state again
  (`_keep_idle`), so the broker never drops a quiet gateway;
- with [uplink] hosts, a failed connect or a dead session moves to the next broker (round robin)
  after the same full-jitter backoff; a credential refresh or a re-mint reconnects to the same one;
- outages are logged by outage.py: the first failure at WARNING with its cause and the settings
  to check, a summary while it lasts, `uplink_recovered` once a session proves itself: its
  subscriptions granted, a PUBACK, or STABLE_SESSION_S connected.

Configuration, commands and state travel through the profile's channel (channels/base.py):
it names the subscriptions, turns incoming messages into config documents and commands, and
reports state and command results; the session calls it and keeps no cloud's dialect itself.

The pieces: connect.py builds the paho client, paho_socket.py drives its socket from this loop
(every paho callback below runs on the loop thread), window.py keeps take -> PUBACK -> ack,
diagnose.py puts failures into words.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.backoff import exponential, full_jitter
from gatewayd.buffer import Buffer
from gatewayd.buffer.wake import Wake
from gatewayd.buffer.wake import first as _first
from gatewayd.clock import clock_plausible
from gatewayd.config import UplinkConfig
from gatewayd.config.profiles import limits_of
from gatewayd.logs import quote
from gatewayd.metrics import Metrics

from . import diagnose
from .channels import CommandIn, ConfigPush, channel_for
from .connect import connect_options, make_client
from .credentials import credentials_for
from .errors import UplinkError
from .outage import OutageLog
from .paho_socket import SocketAdapter
from .payload import Encoder, load_encoder
from .window import InflightWindow

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from gatewayd.lifecycle.keys import KeyRing

log = logging.getLogger("gatewayd.uplink")

MessageHandler = Callable[[str, bytes], bool]  # True: consumed, the channel does not see it
PayloadHandler = Callable[[bytes], None]
# The gateway's state as the daemon sees it (config version, health, counters, buffer depth...).
StateSource = Callable[[], Awaitable[Mapping[str, Any]]]

STATE_MIN_INTERVAL_S = 1.0
# A session shorter than this does not reset the backoff: a broker that accepts and then drops
# at once must not be hammered at the base delay.
STABLE_SESSION_S = 10.0
# Under an idle limit, publish after this fraction of it without a PUBLISH: room for a slow
# PUBACK or a paced backlog before the broker's clock runs out.
IDLE_FRACTION = 0.5

RESUBSCRIBE_S = 5.0
# Command answers made while no session is up (a reconnect, a key switch), kept for the next one.
PENDING_REPLIES = 32
BEFORE_SUBACK = "closed after CONNACK, before SUBACK"
# Short enough that a push made while the broker refused is heard well inside a fleet
# rollout's health timeout (NATS refused for 40-90 s after a lost node, stop 22's CI).
RESUBSCRIBE_MAX_S = 15.0


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
        keyring: KeyRing | None = None,
        on_config: PayloadHandler | None = None,
        on_command: PayloadHandler | None = None,
    ) -> None:
        """Loads the device key and the encoder now, so a bad key stops the daemon at start.

        `on_message` sees every message first, as it came (topic, payload), and may claim it
        (return True; e.g. a release's file chunks); `on_config` gets each configuration document
        and `on_command` each command of the rest, as the channel decoded them.
        """
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.on_message = on_message
        self.on_config = on_config
        self.on_command = on_command
        self.state = state
        self.wall_clock = wall_clock  # tokens and the clock sanity check; intervals are monotonic
        self.encode: Encoder = load_encoder(cfg.encoder, device_name=cfg.field_device_name_of)
        values = cfg.template_values()
        self.client_id = cfg.client_id.format(**values)
        self.topics = {
            name: getattr(cfg.topics, name).format(**values)
            for name in ("events", "state", "config", "commands", "command_results")
        }
        if cfg.presence.enabled:
            self.topics["presence"] = cfg.presence.topic.format(**values)
        # [uplink] hosts: tried in this order, round robin; self.cfg carries the one in use.
        self._addresses = cfg.addresses()
        self._host_index = 0
        self.channel = channel_for(cfg, self.topics)
        self.credentials = credentials_for(
            cfg, key_dir, lambda: self.wall_clock(), metrics, keyring
        )
        self.window = InflightWindow(
            cfg.inflight_window,
            self.encode,
            cfg.batch_max_bytes,
            metrics,
            self.channel.events_topic,
        )
        self.outage = OutageLog()
        self.connected = False
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._sockets: SocketAdapter | None = None
        self._wake = Wake()  # a PUBACK arrived, or the session ended
        self._pending_replies: deque[dict[str, Any]] = deque(maxlen=PENDING_REPLIES)
        self._connack: asyncio.Future[Any] | None = None
        self._closed: asyncio.Future[str] | None = None
        self._broken: str | None = None  # why the current session must end (refused PUBACK)
        self._connected_at = 0.0  # monotonic, of the current session's CONNACK
        self._subscriptions: list[str] = []  # topics of the current session's SUBSCRIBE
        self.subscribed = False  # the broker answered this session's SUBSCRIBE (SUBACK)
        self._refused: list[str] = []  # topics this session's SUBACK refused, with the code
        # Refused topics are asked for again (RESUBSCRIBE_S, doubling to RESUBSCRIBE_MAX_S): a
        # cluster that lost a node refuses while it recovers (NATS), then grants.
        self._refused_topics: list[str] = []
        self._resubscribe_at = 0.0
        self._resubscribe_tries = 0
        self._warned: set[str] = set()  # refusals already logged at WARNING
        self._stopping = False
        self._stop_deadline = 0.0
        self._next_send = 0.0
        self._last_state: bytes | None = None
        self._next_state = 0.0
        self._rng = random.Random()
        self.max_idle_s = limits_of(cfg).max_idle_s  # the broker's idle limit, None: none
        self._last_publish = 0.0  # monotonic, of this session's last PUBLISH (or its CONNECT)

    @property
    def first_puback_at(self) -> float | None:
        """Monotonic time of the current session's first PUBACK."""
        return self.window.first_puback_at

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, reconnect with jittered backoff; returns after `stop()`."""
        self._sockets = SocketAdapter(asyncio.get_running_loop(), self.cfg.keepalive_s)
        self.credentials.load()
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
                self._use_host()
                await self._connect()
                self.credentials.connected()
                reminted = False
                reconnect_now = await self._session()
                if time.monotonic() - started >= STABLE_SESSION_S or reconnect_now:
                    attempt = 0
            except UplinkError as exc:
                self._set_error(exc.reason)
                self.metrics.inc("uplink_connect_failures")
                if exc.auth_refused:
                    self.credentials.refused(exc.reason)
                # A refused token may be a stale one: mint a fresh token once, at once.
                if exc.auth_refused and self.credentials.remint_on_refusal and not reminted:
                    reminted = True
                    self.metrics.inc("uplink_auth_remints")
                    reconnect_now = True
                    log.debug("uplink_auth_remint reason=%s", quote(exc.reason))
                else:
                    self.outage.failed("uplink_connect_failed", exc.reason, exc.fix)
            finally:
                await self._end_session(refresh=reconnect_now)
            if self._stopping or reconnect_now:
                continue
            self._next_host()  # a failed connect or a dead session: the next broker, same backoff
            delay = full_jitter(attempt, self.cfg.backoff_base_s, self.cfg.backoff_cap_s, self._rng)
            attempt += 1
            self.metrics.inc("uplink_reconnects")
            await self._sleep(delay)

    def _use_host(self) -> None:
        host, port = self._addresses[self._host_index]
        if (host, port) != (self.cfg.host, self.cfg.port):
            self.cfg = dataclasses.replace(self.cfg, host=host, port=port)

    def _next_host(self) -> None:
        if len(self._addresses) < 2:
            return
        was = self.host
        self._host_index = (self._host_index + 1) % len(self._addresses)
        self.metrics.inc("uplink_failovers")
        host, port = self._addresses[self._host_index]
        log.info(
            "uplink_failover from=%s to=%s:%d reason=%s", was, host, port, quote(self.last_error)
        )

    @property
    def host(self) -> str:
        """host:port of the broker in use (or being tried): the state document's uplink_host."""
        h = self.cfg.host
        return f"[{h}]:{self.cfg.port}" if ":" in h else f"{h}:{self.cfg.port}"

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

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sockets is not None
        try:
            self._client = client = make_client(
                self.cfg, self.client_id, self.credentials, self.topics.get("presence")
            )
        except (OSError, ssl.SSLError, ValueError) as exc:  # unreadable CA or client cert
            raise diagnose.connect_failed(exc, self.cfg) from exc
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._sockets.attach(client)
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        self._broken = None
        self.window.new_session()
        try:
            connect = functools.partial(
                client.connect,
                self.cfg.host,
                self.cfg.port,
                self.cfg.keepalive_s,
                **connect_options(self.cfg),
            )
            await loop.run_in_executor(None, connect)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise diagnose.connect_failed(exc, self.cfg) from exc
        try:
            reason = await asyncio.wait_for(
                asyncio.shield(self._connack), self.cfg.connect_timeout_s
            )
        except TimeoutError as exc:
            raise UplinkError(f"no CONNACK within {self.cfg.connect_timeout_s:g} s") from exc
        if isinstance(reason, _Closed):
            raise diagnose.closed_before_connack(reason.text, self.cfg)
        if reason is not None:
            raise diagnose.refused(reason, self.cfg)
        self.connected = True
        self._connected_at = self._last_publish = time.monotonic()
        self.last_error = None
        self._last_state = None
        self._next_state = 0.0
        self.metrics.set("uplink_connected", 1)
        self.metrics.inc("uplink_connects")
        # During an outage the connect is not news yet: `uplink_recovered` follows the SUBACK.
        log.log(
            logging.DEBUG if self.outage.down else logging.INFO,
            "uplink_connected host=%s port=%d client_id=%s protocol=%s",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.cfg.protocol,
        )
        if "presence" in self.topics:
            client.publish(self.topics["presence"], self.cfg.presence.online, qos=1, retain=True)
        self._subscriptions = self.channel.subscriptions()
        self.subscribed = False
        self._refused = []
        self._refused_topics = []
        self._resubscribe_tries = 0
        client.subscribe([(t, 1) for t in self._subscriptions])
        self.channel.connected(client)
        while self._pending_replies:
            self.channel.answer(client, self._pending_replies.popleft())

    async def _session(self) -> bool:
        """Publish until the connection ends; True when it ended for a credential refresh."""
        assert self._client is not None and self._closed is not None
        client, closed, window = self._client, self._closed, self.window
        appended = self.buffer.appended
        interval = 1.0 / self.cfg.max_messages_per_s
        while not closed.done():
            now = time.monotonic()
            if self._stopping:  # take nothing new; leave once in-flight messages are acked
                await window.flush(self.buffer)
                if not window or now >= self._stop_deadline:
                    return False
                self._wake.clear()
                await _first([self._wake], timeout=0.1, stop=closed)
                continue
            if self._broken is not None:
                self._set_error(self._broken)
                return False
            if self.outage.down and (
                window.first_puback_at is not None or now - self._connected_at >= STABLE_SESSION_S
            ):
                self.outage.recovered(self._where())
            if now >= self.credentials.refresh_at():  # asked again: a key rotation moves it
                await self._refresh_drain(closed)
                return True
            oldest = window.oldest_sent_at()
            if oldest is not None and now - oldest > self.cfg.puback_timeout_s:
                log.warning("uplink_puback_timeout inflight=%d", len(window))
                self.metrics.inc("uplink_puback_timeouts")
                self._set_error("puback_timeout")
                return False
            self.channel.tick(client, now)
            if self.state is not None and now >= self._next_state:
                await self._publish_state(client)
            self._keep_idle(client, now)
            if self._refused_topics and self.subscribed and now >= self._resubscribe_at:
                self._resubscribe(client, now)
            # Clear before any await, so a PUBACK or append that lands meanwhile is not missed.
            self._wake.clear()
            appended.clear()
            await window.flush(self.buffer)
            if window.full():
                waiters = [self._wake]
            elif now < self._next_send and not self.buffer.nothing_to_take():
                # rate limit: messages are paced, not burst (with nothing to send, wait for
                # records instead: one wake-up, and the pace is kept when they come)
                await _first([], timeout=self._next_send - now, stop=closed)
                continue
            else:
                # The take counts body bytes only; the window splits what the ids overflow.
                entries = await self.buffer.take(
                    self.cfg.batch_max_records, self.cfg.batch_max_bytes
                )
                if entries:
                    sent = window.publish(client, self.topics["events"], entries)
                    self._last_publish = now
                    self._next_send = max(self._next_send, now) + interval * sent
                    continue
                waiters = [appended, self._wake]
            await _first(waiters, timeout=min(1.0, STATE_MIN_INTERVAL_S), stop=closed)
        return False

    async def _refresh_drain(self, closed: asyncio.Future[str]) -> None:
        """Before reconnecting with a new token, give in-flight messages time to be acked."""
        deadline = self.credentials.drain_until(self.cfg.puback_timeout_s)
        while self.window and not closed.done() and time.monotonic() < deadline:
            self._wake.clear()
            await _first([self._wake], timeout=0.2, stop=closed)
        log.info("uplink_token_refresh inflight_left=%d", len(self.window))
        self.metrics.inc("uplink_token_refreshes")

    def reply_command(self, result: dict[str, Any]) -> bool:
        """Answer a command through the channel (outside the buffer). Without a session (a
        reconnect; commit_key switches keys and answers as the old session ends) the answer is
        sent at the next connect, the newest PENDING_REPLIES kept; False then."""
        if self.connected and self._client is not None:
            self._last_publish = time.monotonic()
            if self.channel.answer(self._client, result):
                return True
        self._pending_replies.append(result)
        return False

    def report_outcome(self, outcome: dict[str, Any]) -> None:
        """A config outcome: the channel's own report, if it has one, and the state soon."""
        if self.connected and self._client is not None:
            self.channel.report_outcome(self._client, outcome)
        self.state_changed()

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
        if payload != self._last_state and self.channel.report_state(client, payload):
            self._last_state = payload
            self._last_publish = time.monotonic()
            self.metrics.inc("uplink_state_published")

    def _keep_idle(self, client: mqtt.Client, now: float) -> None:
        """Before the broker's idle limit, say something: the last state again (or `{}`)."""
        silent = now - self._last_publish
        if self.max_idle_s is None or silent < self.max_idle_s * IDLE_FRACTION:
            return
        self._last_publish = now
        payload = self._last_state or b"{}"
        if not self.channel.report_state(client, payload):
            return  # not queued (the connection is going): the next session starts afresh
        log.debug("uplink_idle_publish silent_s=%.0f limit_s=%g", silent, self.max_idle_s)

    async def _end_session(self, refresh: bool = False) -> None:
        client, self._client = self._client, None
        was_connected = self.connected
        self.connected = False
        self.metrics.set("uplink_connected", 0)
        if client is not None and was_connected and self._stopping and "presence" in self.topics:
            # A clean DISCONNECT discards the will, so say it ourselves (sent before it).
            client.publish(self.topics["presence"], self.cfg.presence.offline, qos=1, retain=True)
        if client is not None and self._sockets is not None:
            self._sockets.close(client)
        # No callback can run any more (socket closed, reader removed), so every PUBACK that
        # came in is in the window's acks: acked before the rewind, they are not sent again.
        await self.window.flush(self.buffer)
        self.window.forget()
        await self.buffer.rewind()
        if not was_connected or refresh:  # a refresh is logged as uplink_token_refresh
            return
        early = self._early_close()
        if self._stopping:
            log.info("uplink_disconnected reason=stopped")
        elif early == BEFORE_SUBACK:
            lived = time.monotonic() - self._connected_at
            self._set_error(early)
            self.outage.failed(
                "uplink_disconnected",
                f"the broker closed the connection {lived:.1f} s after accepting it, before "
                f"answering SUBSCRIBE to {', '.join(self._subscriptions)}",
                "if it repeats, the broker refused a topic or this client's permission to "
                "subscribe: check [uplink.topics] config and commands (NATS allows no '.' or "
                "' ' in topics) and the broker's ACL or token scopes; its log names the reason",
            )
        elif early is not None:
            lived = time.monotonic() - self._connected_at
            self._set_error(early)
            self.outage.failed(
                "uplink_disconnected",
                f"the broker closed the connection {lived:.1f} s after accepting it; it had "
                f"refused SUBSCRIBE to {', '.join(self._refused)} and acknowledged no message",
                "the broker does not accept these topics: check [uplink] device and "
                "[uplink.topics] (NATS allows no '.' or ' ' in topics; RabbitMQ needs read and "
                "configure scopes) and the broker's ACL; its log names the reason",
            )
        else:
            reason = self.last_error or "connection lost"
            self.outage.failed("uplink_disconnected", reason, diagnose.session_fix(reason))

    def _early_close(self) -> str | None:
        """Why a session that the broker closed ended before it delivered anything, when its
        subscriptions say so; None for a session that ran."""
        if not self.subscribed:
            return BEFORE_SUBACK
        if self._refused and self.window.first_puback_at is None:
            return "closed after a refused SUBSCRIBE"
        return None

    # -- paho callbacks (loop thread) --------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.window.session_started(getattr(props, "ReceiveMaximum", None))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc if rc.is_failure else None)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(_Closed(str(rc)))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(str(rc))
            if self.connected:
                from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
                # The cause _end_session will name, at once: last_error is read in between.
                self._set_error(self._early_close() or diagnose.connection_lost(rc, from_server))
        self._wake.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        broken = self.window.on_puback(mid, rc)
        if broken is not None:
            self._broken = broken
        self._wake.set()

    def _resubscribe_delay(self) -> float:
        return exponential(self._resubscribe_tries, RESUBSCRIBE_S, RESUBSCRIBE_MAX_S)

    def _resubscribe(self, client: mqtt.Client, now: float) -> None:
        self._subscriptions = list(self._refused_topics)
        self.subscribed = False
        self._resubscribe_at = now + self._resubscribe_delay()
        self._resubscribe_tries += 1
        client.subscribe([(t, 1) for t in self._subscriptions])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self.subscribed = True
        asked = dict(zip(self._subscriptions, codes, strict=False))
        granted = [t for t, rc in asked.items() if not rc.is_failure]
        if granted and self._refused_topics:
            log.info("uplink_subscribe_granted topics=%s (refused before)", ",".join(granted))
        self._refused_topics = [t for t, rc in asked.items() if rc.is_failure] + [
            t for t in self._refused_topics if t not in asked
        ]
        self._refused = [r for r in self._refused if r.rpartition(" (")[0] not in granted]
        if self._refused_topics and self._resubscribe_at <= time.monotonic():
            self._resubscribe_at = time.monotonic() + self._resubscribe_delay()
        for topic, rc in zip(self._subscriptions, codes, strict=False):
            if rc.is_failure:
                self.metrics.inc("uplink_subscribe_refused")
                refusal = f"{topic} (0x{rc.value:02x})"
                if refusal not in self._refused:
                    self._refused.append(refusal)
                first = refusal not in self._warned
                self._warned.add(refusal)
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "uplink_subscribe_refused topic=%s code=0x%02x reason=%s fix=%s",
                    quote(topic),
                    rc.value,
                    quote(str(rc)),
                    quote(
                        "nothing arrives on this topic: grant this client the right to subscribe "
                        "to it in the broker's ACL or token scopes, or fix [uplink.topics]"
                    ),
                )
        if not self._refused:  # a refused topic may yet close the session: not proven
            self.outage.recovered(self._where())

    def _where(self) -> str:
        return f" host={self.cfg.host} port={self.cfg.port} client_id={quote(self.client_id)}"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.metrics.inc("uplink_messages_received")
        try:
            if self.on_message is None or not self.on_message(msg.topic, msg.payload):
                self._dispatch(msg.topic, msg.payload)
        except Exception:  # a peer's bytes must never kill the uplink
            log.exception("message_handler_failed topic=%s", msg.topic)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        got = self.channel.incoming(topic, payload)
        if isinstance(got, ConfigPush) and self.on_config is not None:
            self.on_config(got.payload)
        elif isinstance(got, CommandIn) and self.on_command is not None:
            self.on_command(got.payload)


class _Closed:
    """The connection closed before a CONNACK (e.g. a broker that drops bad clients)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text
