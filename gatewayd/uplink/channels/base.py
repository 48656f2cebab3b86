"""The cloud channel: how configuration, commands and state travel on one cloud's own mechanism.

Telemetry always goes through the buffer and the in-flight window (window.py); everything else
the gateway and the cloud say to each other goes through a channel, which the profile selects
(`channel_for` in __init__.py). The session calls it at fixed points, all on the loop thread:

- `events_topic(events, subfolder)`: the topic of telemetry a routing rule sent to `subfolder`
  (`events` is the configured events topic; the window asks once per run of records with the
  same subfolder): a topic level on most clouds, a message property where the topic must end
  with something else (Azure's property bag);

- `subscriptions()`: the topic filters to SUBSCRIBE after every CONNACK (QoS 1); the session
  checks each SUBACK code against this list;
- `connected(client)`: once per session, right after that SUBSCRIBE (e.g. Azure's twin GET);
- `incoming(topic, payload)`: every message from the broker; returns a `ConfigPush` (a whole
  configuration document, as bytes, for ConfigManager.on_push), a `CommandIn` (a command in the
  form of commands.py, `{"id", "point", "value"}` or `{"id", "command"}`) or None when the
  channel consumed it (a twin response, an answer to its own request);
- `tick(client, now)`: at least once a second while connected: retries and throttle back-off;
- `report_state(client, payload)`: the state document (strict JSON bytes), on change and at most
  once a second; it carries the config outcomes (`config`, `config_recent`). True when it is
  sent or taken in charge (queued behind a back-off); False to be offered again next time;
- `report_outcome(client, outcome)`: one config outcome, when it is decided (a channel with a
  per-document answer, such as an AWS job execution, reports it here; others rely on the state
  document);
- `answer(client, result)`: a command's result (commands.py: id, status, reason, ts). The
  channel finds what the result answers by its `id` (it chose that id in `incoming`).

Invariants a channel keeps:
- `incoming` never raises for a peer's bytes: what it cannot read is logged and dropped, or
  answered as refused when the cloud waits for an answer;
- the same document delivered again (at a reconnect: a retained topic, a twin GET) comes out as
  the same bytes, so ConfigManager can tell a redelivery from a new push;
- a throttled request is retried after a growing pause, never at once (THROTTLE_BASE_S doubling
  up to THROTTLE_CAP_S), and until one succeeds, one request at a time;
- a channel keeps no client: it is handed the current session's at every call.

Channels: topic.py (retained config topic + commands topic, Cloud IoT Core, ClearBlade, any
MQTT broker), azure.py (device twin + direct methods), aws.py (named shadow desired state ->
ConfigPush, jobs -> ConfigPush or CommandIn with `report_outcome` on the job execution),
thingsboard.py (shared attributes -> ConfigPush, server-side RPC -> CommandIn, client
attributes for the state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gatewayd.backoff import exponential

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

THROTTLE_BASE_S = 1.0
THROTTLE_CAP_S = 60.0


@dataclass(frozen=True, slots=True)
class ConfigPush:
    payload: bytes  # a whole configuration document (JSON, or a JWS when signatures are required)


@dataclass(frozen=True, slots=True)
class CommandIn:
    payload: bytes  # a command object for commands.py, its "id" chosen by the channel


Incoming = ConfigPush | CommandIn | None


class Channel(Protocol):
    name: str

    def events_topic(self, events: str, subfolder: str) -> str: ...

    def subscriptions(self) -> list[str]: ...

    def connected(self, client: mqtt.Client) -> None: ...

    def incoming(self, topic: str, payload: bytes) -> Incoming: ...

    def tick(self, client: mqtt.Client, now: float) -> None: ...

    def report_state(self, client: mqtt.Client, payload: bytes) -> bool: ...

    def report_outcome(self, client: mqtt.Client, outcome: dict[str, Any]) -> None: ...

    def answer(self, client: mqtt.Client, result: dict[str, Any]) -> bool: ...


class Throttle:
    """Back-off after a throttled answer (HTTP-like 429): 1, 2, 4 ... 60 s; reset by a success."""

    def __init__(self) -> None:
        self.until = 0.0  # monotonic
        self._throttles = 0  # throttled answers since the last success

    def throttled(self, now: float) -> float:
        pause = exponential(self._throttles, THROTTLE_BASE_S, THROTTLE_CAP_S)
        self._throttles += 1
        self.until = now + pause
        return pause

    def succeeded(self) -> None:
        self._throttles = 0

    def blocked(self, now: float) -> bool:
        return now < self.until

    @property
    def probing(self) -> bool:
        """Throttled since the last success: one request at a time until one succeeds."""
        return self._throttles > 0
