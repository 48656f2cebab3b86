"""The in-flight window: take -> publish -> PUBACK -> ack to the buffer.

Invariants:
- a record is acked to the buffer only from a successful PUBACK of the message that carried it
  (MQTT 5: reason code below 0x80); a refused PUBACK is reported, never acked;
- at most `limit` messages are unacknowledged at once; the session stops taking while `full()`
  (a take may become a few messages when records go to different subfolders or exceed the size
  limit);
- `forget()` drops the in-flight set after a disconnect; the caller rewinds the buffer, so
  everything not acked is sent again, in order (duplicates only for messages whose PUBACK was
  lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gatewayd.buffer import Buffer, Entry
from gatewayd.metrics import Metrics

from .payload import Encoder, subfolder_of

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("gatewayd.uplink")


class InflightWindow:
    def __init__(
        self,
        limit: int,
        encode: Encoder,
        batch_max_bytes: int,
        metrics: Metrics,
        subfolder_topic: Callable[[str, str], str],
    ) -> None:
        self.configured = limit
        self.limit = limit  # lowered by an MQTT 5 server's Receive Maximum
        self.encode = encode
        self.batch_max_bytes = batch_max_bytes
        self.metrics = metrics
        self.subfolder_topic = subfolder_topic  # the channel's: (events topic, subfolder) -> topic
        self.first_puback_at: float | None = None  # monotonic, of the current session
        self._inflight: dict[int, tuple[list[int], float]] = {}  # mid -> (record ids, sent at)
        self._acks: list[int] = []

    def __len__(self) -> int:
        return len(self._inflight)

    def full(self) -> bool:
        return len(self._inflight) >= self.limit

    def oldest_sent_at(self) -> float | None:
        return next(iter(self._inflight.values()))[1] if self._inflight else None

    def session_started(self, server_receive_max: int | None) -> None:
        # paho does not honour an MQTT 5 server's Receive Maximum; the window does.
        self.limit = min(self.configured, server_receive_max or self.configured)

    def new_session(self) -> None:
        self.first_puback_at = None

    def publish(self, client: mqtt.Client, topic: str, entries: list[Entry]) -> int:
        """Publish a take as one message per subfolder run (usually one); returns how many."""
        # The common case, kept cheap: one search of all bodies (a newline is in no pattern).
        if '"subfolder":' not in "\n".join([e.body for e in entries]):
            return self._publish_fit(client, topic, entries)
        sent = 0
        start = 0
        sub = subfolder_of(entries[0])
        for i in range(1, len(entries) + 1):
            nxt = subfolder_of(entries[i]) if i < len(entries) else None
            if i == len(entries) or nxt != sub:
                to = self.subfolder_topic(topic, sub) if sub else topic
                sent += self._publish_fit(client, to, entries[start:i])
                start, sub = i, nxt
        return sent

    def _publish_fit(self, client: mqtt.Client, topic: str, entries: list[Entry]) -> int:
        payload = self.encode(entries)
        limit = self.batch_max_bytes
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
        # Send now rather than from the loop's writable callback one turn later (paho keeps
        # the writer registered if the socket takes only part of it).
        client.loop_write()
        self._inflight[info.mid] = ([e.id for e in entries], time.monotonic())
        self.metrics.inc("published_records", len(entries))
        self.metrics.inc("published_messages")
        self.metrics.inc("published_bytes", len(payload))
        return 1

    def on_puback(self, mid: int, rc: Any) -> str | None:
        """Record a PUBACK; returns why the session must end when the broker refused it."""
        entry = self._inflight.pop(mid, None)
        if entry is None:  # a state message, or a session already forgotten
            return None
        if rc.is_failure:  # MQTT 5: the broker refused the message (quota, ACL, size)
            self.metrics.inc("uplink_publish_refused")
            log.warning("uplink_publish_refused reason=%s records=%d", rc, len(entry[0]))
            return f"publish refused: {rc}"
        if self.first_puback_at is None:
            self.first_puback_at = time.monotonic()
        self._acks.extend(entry[0])
        return None

    async def flush(self, buffer: Buffer) -> None:
        """Hand the buffer every record whose PUBACK came in; it acks them on its writer thread
        before its next job (the next take or append), in the same hop."""
        if self._acks:
            ids, self._acks = self._acks, []
            buffer.ack_soon(ids)
            self.metrics.inc("acked_records", len(ids))

    def forget(self) -> None:
        self._inflight.clear()
