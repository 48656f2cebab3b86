"""A paho client built from the [uplink] settings: protocol, session, credentials, TLS, last will.

Invariants: one client per connection attempt (paho's own reconnect and queue are unused: the
buffer is the queue), with paho's in-flight limit at the window's size; the session is clean
unless `clean_session = false` asks the broker to keep it (MQTT 5: for `session_expiry_s`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gatewayd.config import UplinkConfig

from .credentials import Credentials
from .tls import apply_tls

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def make_client(
    cfg: UplinkConfig, client_id: str, creds: Credentials, presence_topic: str | None = None
) -> mqtt.Client:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if cfg.protocol == "5":
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=cfg.clean_session,
        )
    c.connect_timeout = cfg.connect_timeout_s
    c.max_inflight_messages_set(cfg.inflight_window)
    c.max_queued_messages_set(0)
    if creds.username is not None:
        c.username_pw_set(creds.username, creds.password())
    if presence_topic is not None:  # the broker says "offline" for us when we vanish
        c.will_set(presence_topic, cfg.presence.offline, qos=1, retain=True)
    apply_tls(c, cfg.tls, cfg.host)
    return c


def connect_options(cfg: UplinkConfig) -> dict[str, Any]:
    """Keyword arguments of `client.connect` beyond host, port and keepalive."""
    if cfg.protocol != "5":
        return {}  # 3.1.1 carries clean_session in the client
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0 if cfg.clean_session else cfg.session_expiry_s
    return {"clean_start": cfg.clean_session, "properties": props}
