"""An embedded MQTT 3.1.1 broker that plays the cloud: JWT device auth, retained config, commands.

Not a general-purpose broker: clean sessions only, QoS 0 and 1, no persistence. What it adds is
what a test of a gateway needs: every CONNECT checked against the device registry (or accepted
when no registry is given), a connection closed when its token expires, a recorder of received
records by id, and fault switches (stop acknowledging, drop every client, close on a SUBSCRIBE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .mqtt_wire import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    Cursor,
    ProtocolError,
    mqtt_str,
    packet,
    read_packet,
    topic_matches,
)
from .recorder import Recorder
from .registry import Registry

log = logging.getLogger("gatewayd_sim.cloud")

# CONNACK return codes of MQTT 3.1.1
ACCEPTED, BAD_PROTOCOL, BAD_CLIENT_ID, UNAVAILABLE, BAD_CREDENTIALS, NOT_AUTHORIZED = range(6)

OBSERVER = "observer"  # username of in-test subscribers when a registry is in force


@dataclass
class Session:
    client_id: str
    writer: asyncio.StreamWriter
    device: str | None
    subscriptions: dict[str, int] = field(default_factory=dict)
    next_id: int = 0

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


@dataclass(frozen=True)
class AuthEvent:
    client_id: str
    accepted: bool
    reason: str
    at: float
    claims: dict[str, Any] = field(default_factory=dict)
    kid: str | None = None
    username: str | None = None


class Broker:
    def __init__(
        self,
        registry: Registry | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        recorder: Recorder | None = None,
        observer_password: str | None = None,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.recorder = recorder or Recorder()
        self.observer_password = observer_password
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, bytes] = {}
        self.auth_log: list[AuthEvent] = []
        self.acks_enabled = True  # fault switch: a broker that silently stops acknowledging
        self.ack_delay_s = 0.0  # fault switch: a slow broker (or a long round trip)
        self.on_message: Callable[[str, bytes], None] | None = None
        # Fault switch: close the connection on a SUBSCRIBE to a pattern this refuses, with no
        # SUBACK (NATS does so for '.' or ' ' in a topic, RabbitMQ for a missing scope).
        self.close_on_subscribe: Callable[[str], bool] | None = None
        self.connections = 0
        self.expired_disconnects = 0  # connections closed because their token expired
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Broker:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_all()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def drop_all(self) -> None:
        """Close every client connection (a broker restart as the clients see it)."""
        for s in list(self.sessions.values()):
            s.writer.close()

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        """Publish from the cloud side (config pushes, commands)."""
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        self._route(topic, payload, qos, retain=False)

    def _expire(self, s: Session) -> None:
        """Cloud IoT Core closed a connection whose token expired; so does the stand-in."""
        self.expired_disconnects += 1
        log.info("token_expired_disconnect client=%s", s.client_id)
        s.writer.close()

    def push_config(self, device: str, document: bytes) -> None:
        """Cloud IoT Core style: the latest config is retained, and sent on every subscribe."""
        self.publish(f"/devices/{device}/config", document, retain=True)

    def send_command(self, device: str, payload: bytes, subfolder: str | None = None) -> None:
        topic = f"/devices/{device}/commands" + (f"/{subfolder}" if subfolder else "")
        self.publish(topic, payload)

    def _route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        for s in list(self.sessions.values()):
            for pattern, sub_qos in s.subscriptions.items():
                if topic_matches(pattern, topic):
                    self._deliver(s, topic, payload, min(qos, sub_qos), retain)
                    break

    def _deliver(self, s: Session, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        flags = (qos << 1) | (1 if retain else 0)
        body = mqtt_str(topic)
        if qos:
            body += struct.pack(">H", s.packet_id())
        s.send(packet(PUBLISH, flags, body + payload))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        session: Session | None = None
        try:
            ptype, _, body = await asyncio.wait_for(read_packet(reader), 10)
            if ptype != CONNECT:
                return
            session, keepalive, exp = self._connect(body, writer)
            if session is None:
                return
            now = self.registry.clock() if self.registry is not None else time.time()
            deadline = exp - now if exp else None
            expiry = (
                asyncio.get_running_loop().call_later(max(deadline, 0), self._expire, session)
                if deadline is not None
                else None
            )
            try:
                await self._session_loop(session, reader, keepalive)
            finally:
                if expiry:
                    expiry.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ProtocolError) as exc:
            log.debug("client_closed reason=%s", type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            if session is not None and self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
            writer.close()
            self._tasks.discard(task)

    def _connect(
        self, body: bytes, writer: asyncio.StreamWriter
    ) -> tuple[Session | None, int, float]:
        c = Cursor(body)
        proto, level, flags, keepalive = c.text(), c.u8(), c.u8(), c.u16()
        if proto != "MQTT" or level != 4:
            writer.write(packet(CONNACK, 0, bytes([0, BAD_PROTOCOL])))
            return None, 0, 0.0
        client_id = c.text()
        if flags & 0x04:  # will: topic and message, ignored
            c.blob()
            c.blob()
        username = c.text() if flags & 0x80 else None
        password = c.blob() if flags & 0x40 else None
        code, reason, device, exp, claims, kid = self._authenticate(client_id, username, password)
        self.auth_log.append(
            AuthEvent(client_id, code == ACCEPTED, reason, time.time(), claims, kid, username)
        )
        if code != ACCEPTED:
            log.info("connect_refused client=%s reason=%s", client_id, reason)
            writer.write(packet(CONNACK, 0, bytes([0, code])))
            return None, 0, 0.0
        old = self.sessions.get(client_id)
        if old is not None:  # MQTT: a second connection with the same id takes over
            old.writer.close()
        session = Session(client_id, writer, device)
        self.sessions[client_id] = session
        writer.write(packet(CONNACK, 0, bytes([0, ACCEPTED])))
        return session, keepalive, exp

    def _authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> tuple[int, str, str | None, float, dict[str, Any], str | None]:
        if username == OBSERVER and self.observer_password is not None:
            if password == self.observer_password.encode():
                return ACCEPTED, "observer", None, 0.0, {}, None
            return BAD_CREDENTIALS, "wrong observer password", None, 0.0, {}, None
        if self.registry is None:
            return ACCEPTED, "open broker", None, 0.0, {}, None
        r = self.registry.authenticate(client_id, password)
        if r.device is None:
            code = BAD_CLIENT_ID if "client id" in r.reason else NOT_AUTHORIZED
            return code, r.reason, None, 0.0, {}, None
        return ACCEPTED, "ok", r.device, r.exp, r.claims, r.kid

    def _allowed(self, s: Session, topic: str) -> bool:
        """A device may touch only its own /devices/{id}/... topics."""
        if self.registry is None or s.device is None:
            return True
        return topic.startswith(f"/devices/{s.device}/")

    async def _session_loop(self, s: Session, reader: asyncio.StreamReader, keepalive: int) -> None:
        timeout = keepalive * 1.5 if keepalive else None
        while True:
            ptype, flags, body = await asyncio.wait_for(read_packet(reader), timeout)
            if ptype == PUBLISH:
                self._on_publish(s, flags, body)
            elif ptype == SUBSCRIBE:
                c = Cursor(body)
                pid = c.u16()
                codes = bytearray()
                while c.more:
                    pattern, qos = c.text(), c.u8() & 0x03
                    if self.close_on_subscribe is not None and self.close_on_subscribe(pattern):
                        raise ProtocolError(f"{s.client_id} may not subscribe to {pattern}")
                    if not self._allowed(s, pattern.replace("#", "x").replace("+", "x")):
                        codes.append(0x80)
                        continue
                    s.subscriptions[pattern] = min(qos, 1)
                    codes.append(min(qos, 1))
                    for topic, payload in list(self.retained.items()):
                        if topic_matches(pattern, topic):
                            self._deliver(s, topic, payload, min(qos, 1), retain=True)
                s.send(packet(SUBACK, 0, struct.pack(">H", pid) + bytes(codes)))
            elif ptype == UNSUBSCRIBE:
                c = Cursor(body)
                pid = c.u16()
                while c.more:
                    s.subscriptions.pop(c.text(), None)
                s.send(packet(UNSUBACK, 0, struct.pack(">H", pid)))
            elif ptype == PINGREQ:
                s.send(packet(PINGRESP, 0, b""))
            elif ptype == PUBACK:
                pass
            elif ptype == DISCONNECT:
                return
            else:
                raise ProtocolError(f"unexpected packet type {ptype}")
            await s.writer.drain()

    def _on_publish(self, s: Session, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        retain = bool(flags & 0x01)
        c = Cursor(body)
        topic = c.text()
        pid = c.u16() if qos else 0
        payload = c.rest()
        if qos > 1:
            raise ProtocolError("QoS 2 is not supported by the stand-in")
        if not self._allowed(s, topic):
            raise ProtocolError(f"{s.client_id} may not publish to {topic}")
        if "/events" in topic and not topic.endswith("/command-results"):
            self.recorder.feed(payload)
        if self.on_message is not None:
            self.on_message(topic, payload)
        if retain:
            self.retained[topic] = payload
        self._route(topic, payload, qos, retain=False)
        if qos and self.acks_enabled:
            ack = packet(PUBACK, 0, struct.pack(">H", pid))
            if self.ack_delay_s:
                asyncio.get_running_loop().call_later(self.ack_delay_s, s.send, ack)
            else:
                s.send(ack)
