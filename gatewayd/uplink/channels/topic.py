"""The topic channel: a retained config topic, a commands topic, a state topic, a results topic.

Cloud IoT Core's dialect, kept by ClearBlade and usable on any broker (profile "mqtt"): the
configuration is the payload of the config topic (retained, so it comes again at every
SUBSCRIBE: ConfigManager ignores the redelivery), every message on the commands filter is a
command, the state document goes to the state topic (retained when `retain_state`), and
command results to the command_results topic. A routed subfolder is a level under the events
topic (`{events}/{subfolder}`), as Cloud IoT Core's telemetry subfolders were.

Invariant: payloads pass unchanged both ways; the channel adds nothing and keeps no state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .base import CommandIn, ConfigPush, Incoming

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


class TopicChannel:
    name = "topic"

    def __init__(self, topics: Mapping[str, str], retain_state: bool) -> None:
        self.topics = topics
        self.retain_state = retain_state

    def events_topic(self, events: str, subfolder: str) -> str:
        return f"{events}/{subfolder}"

    def subscriptions(self) -> list[str]:
        return [self.topics["config"], self.topics["commands"]]

    def connected(self, client: mqtt.Client) -> None:
        pass  # the broker sends the retained config on SUBSCRIBE

    def incoming(self, topic: str, payload: bytes) -> Incoming:
        if topic == self.topics["config"]:
            return ConfigPush(payload)
        return CommandIn(payload)  # the commands filter is the only other subscription

    def tick(self, client: mqtt.Client, now: float) -> None:
        pass

    def report_state(self, client: mqtt.Client, payload: bytes) -> bool:
        info = client.publish(self.topics["state"], payload, qos=1, retain=self.retain_state)
        return info.rc == 0

    def report_outcome(self, client: mqtt.Client, outcome: dict[str, Any]) -> None:
        pass  # outcomes travel in the state document

    def answer(self, client: mqtt.Client, result: dict[str, Any]) -> bool:
        payload = json.dumps(result, allow_nan=False)
        return client.publish(self.topics["command_results"], payload, qos=1).rc == 0
