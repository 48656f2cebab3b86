"""A paho client built from the [uplink] settings, and connection failures put into words.

Invariant: one client per connection attempt (paho's own reconnect and queue are unused: the
buffer is the queue), with clean sessions and paho's in-flight limit at the window's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatewayd.config import UplinkConfig

from .credentials import Credentials
from .tls import apply_tls

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def make_client(cfg: UplinkConfig, client_id: str, creds: Credentials) -> mqtt.Client:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if cfg.protocol == "5":
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
    c.connect_timeout = cfg.connect_timeout_s
    c.max_inflight_messages_set(cfg.inflight_window)
    c.max_queued_messages_set(0)
    if creds.username is not None:
        c.username_pw_set(creds.username, creds.password())
    apply_tls(c, cfg.tls, cfg.host)
    return c
