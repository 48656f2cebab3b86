"""Cloud profiles as data: the defaults a cloud needs and the hard limits it enforces.

`[uplink] profile` picks one; each of its defaults can be overridden in [uplink], its limits
cannot: `load` (so `gatewayd check` as well as `run`) refuses a setting that breaks one, with
the place and the fix. Without a profile the defaults are Cloud IoT Core's and nothing extra is
enforced (configs written before profiles existed keep working). Under `profile = "mqtt"` (any
broker) `broker` names the broker when it has limits of its own (NATS, RabbitMQ).

Invariant: topics are checked as the broker will see them, after templating with the device.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from .errors import ConfigError
from .model import RouteStep, RuleConfig, TopicsConfig, UplinkConfig

CLOUD_IOT_CLIENT_ID = UplinkConfig().client_id
PAYLOAD_256K = 256 * 1024
PAYLOAD_128K = 128 * 1024
# AWS IoT Core counts every publish of a connection against its 100/s: telemetry is paced below
# it so the shadow, job and command-result publishes fit beside it.
AWS_CHANNEL_PUBLISHES_PER_S = 10
AWS_THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")
PAYLOAD_64K = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    protocols: tuple[str, ...] = ("3.1.1", "5")
    tls_required: bool = False
    auth_kinds: tuple[str, ...] = ("jwt", "password", "none")
    max_payload_bytes: int | None = None
    max_keepalive_s: int | None = None
    retained: bool = True  # the broker keeps retained messages
    topic_forbidden: str = ""  # characters a topic must not contain
    tls_minimum: str | None = None  # "1.2": the uplink refuses older TLS (tls.py)
    # The broker drops a connection with no PUBLISH for this long, whatever the keepalive
    # (PINGREQs do not count): the session publishes its state before (session.py).
    max_idle_s: float | None = None
    max_topic_slashes: int | None = None  # AWS: 7, after the Basic Ingest prefix
    basic_ingest: bool = False  # `$aws/rules/<rule>/` before a topic: not counted, allowed
    max_publishes_per_s: float | None = None  # every publish of a connection, not only telemetry
    max_inflight: int | None = None  # unacknowledged QoS 1 publishes per connection
    why: str = ""  # who imposes these limits, for the error text


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    host: str  # a template over region; "" when the user must set it
    port: int = 8883
    client_id: str = CLOUD_IOT_CLIENT_ID
    auth_kind: str | None = "jwt"  # None: the user must choose [uplink.auth] kind
    username: str = "unused"  # a template, like the client id
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    batch_max_bytes: int = PAYLOAD_256K
    channel: Literal["topic", "azure", "aws", "thingsboard"] = "topic"  # gatewayd/uplink/channels
    max_messages_per_s: float = UplinkConfig().max_messages_per_s
    limits: Limits = field(default_factory=Limits)
    encoder: str = "json"  # gatewayd/uplink/payload.py
    # Records per take, None: UplinkConfig's. A take is counted in stored bytes; where the
    # encoding is larger than that, fewer records keep a message under the limit without the
    # window splitting (and encoding twice) most of them.
    batch_max_records: int | None = None
    plain_port: int | None = None  # the default port when [uplink.tls] enabled = false


_IOT_CORE = Limits(
    protocols=("3.1.1",),
    tls_required=True,
    auth_kinds=("jwt",),
    max_payload_bytes=PAYLOAD_256K,
)

PROFILES: dict[str, Profile] = {
    "": Profile("", host="mqtt.googleapis.com"),  # no profile: Cloud IoT Core's defaults only
    "cloud-iot-core": Profile(
        "cloud-iot-core",
        host="mqtt.googleapis.com",
        limits=replace(_IOT_CORE, why="Cloud IoT Core"),
    ),
    # Cloud IoT Core's successor: the same client id, JWT and topics; regional hosts, TLS 1.2+,
    # MQTT 3.1.1 only, no retained messages (configuration is redelivered at QoS 1, the latest
    # version wins), an idle limit of 20 minutes whatever the keepalive, and QoS 1 messages
    # dropped without a PUBACK when it is busy (covered by puback_timeout_s and the resend).
    "clearblade": Profile(
        "clearblade",
        host="{region}-mqtt.clearblade.com",
        limits=replace(
            _IOT_CORE,
            retained=False,
            max_keepalive_s=1200,
            max_idle_s=1200,
            tls_minimum="1.2",
            why="ClearBlade IoT Core",
        ),
    ),
    # No retained messages: config from the device twin's desired property `gatewayd`, state
    # and outcomes to its reported one, commands as direct methods (channels/azure.py).
    # Unused topics name the twin's and methods' own, for reading only.
    "azure-iot-hub": Profile(
        "azure-iot-hub",
        host="{hub}.azure-devices.net",
        client_id="{device}",
        auth_kind="sas",
        username="{hub}.azure-devices.net/{device}/?api-version=2021-04-12",
        topics=TopicsConfig(
            events="devices/{device}/messages/events/$.ct=application%2Fjson&$.ce=utf-8",
            state="$iothub/twin/PATCH/properties/reported/",
            config="$iothub/twin/PATCH/properties/desired/#",
            commands="$iothub/methods/POST/#",
            command_results="$iothub/methods/res/",
        ),
        channel="azure",
        limits=Limits(
            protocols=("3.1.1",),
            tls_required=True,
            auth_kinds=("sas", "x509"),
            max_payload_bytes=PAYLOAD_256K,
            max_keepalive_s=1178,  # IoT Hub's longest keepalive is 1177 s
            retained=False,
            why="Azure IoT Hub",
        ),
    ),
    # Thing name as client id, mTLS with the device certificate ([uplink.tls] cert_file and
    # key_file), the account's ATS endpoint. State and config outcomes in the named shadow
    # `gatewayd` (reported), configuration from its desired `document`, larger documents and
    # commands as Jobs, commands also on the commands topic (channels/aws.py). Topics fit the
    # usual thing policy (`+/{thing}/#`); `state` and `config` name the shadow's own topics,
    # for reading only. Telemetry may go through Basic Ingest: events = "$aws/rules/<rule>/...".
    "aws-iot-core": Profile(
        "aws-iot-core",
        host="{account_prefix}-ats.iot.{region}.amazonaws.com",
        client_id="{device}",
        auth_kind="x509",
        topics=TopicsConfig(
            events="gatewayd/{device}/events",
            state="$aws/things/{device}/shadow/name/gatewayd/update",
            config="$aws/things/{device}/shadow/name/gatewayd/update/delta",
            commands="gatewayd/{device}/commands/#",
            command_results="gatewayd/{device}/command-results",
        ),
        batch_max_bytes=PAYLOAD_128K,
        channel="aws",
        max_messages_per_s=100.0 - AWS_CHANNEL_PUBLISHES_PER_S,
        limits=Limits(
            tls_required=True,
            auth_kinds=("x509",),
            max_payload_bytes=PAYLOAD_128K,
            max_keepalive_s=1201,  # AWS IoT Core's keepalive is 30 to 1200 s
            max_topic_slashes=7,
            basic_ingest=True,
            max_publishes_per_s=100.0,
            max_inflight=100,
            why="AWS IoT Core",
        ),
    ),
    # The gateway MQTT API (channels/thingsboard.py): the access token as MQTT username (or an
    # X.509 certificate, or ThingsBoard's "MQTT Basic" credentials as a password), telemetry of
    # the field devices on v1/gateway/telemetry (encoder "thingsboard": a device's records
    # grouped by timestamp, their ids in `_id`), configuration from the gateway device's shared
    # attribute `gatewayd`, commands as server-side RPC, state as client attributes. Port 1883
    # without TLS, 8883 with; ThingsBoard's MQTT transport refuses a message over 64 KB
    # (NETTY_MAX_PAYLOAD_SIZE) and ignores the retain flag. Its host is the user's own server
    # (or thingsboard.cloud / eu.thingsboard.cloud): no default.
    "thingsboard": Profile(
        "thingsboard",
        host="",
        port=8883,
        plain_port=1883,
        client_id="{device}",
        auth_kind="access_token",
        username="",
        topics=TopicsConfig(
            events="v1/gateway/telemetry",
            state="v1/devices/me/attributes",
            config="v1/devices/me/attributes",
            commands="v1/devices/me/rpc/request/+",
            command_results="v1/devices/me/rpc/response/",
        ),
        batch_max_bytes=PAYLOAD_64K,
        batch_max_records=800,  # about 57 KB at worst (a ts per reading, 13-digit ids)
        channel="thingsboard",
        encoder="thingsboard",
        limits=Limits(
            auth_kinds=("access_token", "x509", "password"),
            max_payload_bytes=PAYLOAD_64K,
            retained=False,
            why="ThingsBoard",
        ),
    ),
    "mqtt": Profile("mqtt", host="", client_id="{device}", auth_kind=None, username="{device}"),
}

# Brokers under profile = "mqtt" that refuse or rewrite what others accept.
BROKERS: dict[str, Limits] = {
    "": Limits(),
    "mosquitto": Limits(),
    "emqx": Limits(),
    "hivemq": Limits(),
    # NATS closes the connection on a '.' or ' ' in a topic and speaks MQTT 3.1.1 only.
    "nats": Limits(protocols=("3.1.1",), topic_forbidden=". ", why="NATS"),
    # RabbitMQ maps '/' to '.' in routing keys: a '.' in a topic silently becomes a level.
    "rabbitmq": Limits(topic_forbidden=".", why="RabbitMQ"),
}


def limits_of(cfg: UplinkConfig) -> Limits:
    """The limits in force for a loaded [uplink]: its broker's under "mqtt", else its profile's."""
    if cfg.broker:
        return BROKERS[cfg.broker]
    return PROFILES[cfg.profile].limits


def defaults(
    profile: Profile, region: str, hub: str = "", account_prefix: str = ""
) -> UplinkConfig:
    """The [uplink] defaults under `profile` (host templated with the region, hub and AWS
    account prefix)."""
    d = UplinkConfig()
    values = {"region": region, "hub": hub, "account_prefix": account_prefix}
    return replace(
        d,
        hub=hub,
        account_prefix=account_prefix,
        channel=profile.channel,
        host=profile.host.format(**values) if profile.host else "",
        port=profile.port,
        client_id=profile.client_id,
        batch_max_bytes=profile.batch_max_bytes,
        max_messages_per_s=profile.max_messages_per_s,
        batch_max_records=profile.batch_max_records or d.batch_max_records,
        encoder=profile.encoder,
        topics=profile.topics,
        auth=replace(d.auth, username=profile.username),
    )


def _fail(place: str, problem: str, limits: Limits, fix: str) -> ConfigError:
    return ConfigError(place, f"{problem} ({limits.why} does not allow it)", fix)


def check(cfg: UplinkConfig, limits: Limits, at: Callable[[str], str]) -> None:
    """Refuse what `limits` forbid, naming the setting (`at(key)` is its place) and the fix."""
    if cfg.protocol not in limits.protocols:
        raise _fail(
            at("protocol"),
            f"{cfg.protocol!r} is not supported",
            limits,
            f'set protocol = "{limits.protocols[0]}"',
        )
    if limits.tls_required and not cfg.tls.enabled:
        raise _fail(at("tls.enabled"), "false", limits, "set enabled = true")
    if cfg.auth.kind not in limits.auth_kinds:
        raise _fail(
            at("auth.kind"),
            f"{cfg.auth.kind!r}",
            limits,
            f'use kind = "{limits.auth_kinds[0]}"',
        )
    if limits.max_payload_bytes is not None and cfg.batch_max_bytes > limits.max_payload_bytes:
        raise _fail(
            at("batch_max_bytes"),
            f"{cfg.batch_max_bytes} is above the message limit of {limits.max_payload_bytes}",
            limits,
            f"use at most {limits.max_payload_bytes}",
        )
    if limits.max_keepalive_s is not None and cfg.keepalive_s >= limits.max_keepalive_s:
        raise _fail(
            at("keepalive_s"),
            f"{cfg.keepalive_s} reaches the idle limit of {limits.max_keepalive_s} s",
            limits,
            f"use less than {limits.max_keepalive_s}",
        )
    _check_rates(cfg, limits, at)
    if not limits.retained:
        if cfg.retain_state:
            raise _fail(at("retain_state"), "true", limits, "set retain_state = false")
        if cfg.presence.enabled:
            raise _fail(
                at("presence.enabled"),
                "true: presence is a retained message",
                limits,
                "set enabled = false and read presence from the state document",
            )
    if limits.max_topic_slashes is not None:
        _check_aws_names(cfg, limits, at)
    if limits.topic_forbidden:
        values = cfg.template_values()
        topics = {f"topics.{n}": getattr(cfg.topics, n) for n in TopicsConfig.__dataclass_fields__}
        if cfg.presence.enabled:
            topics["presence.topic"] = cfg.presence.topic
        for key, template in topics.items():
            topic = template.format(**values)
            bad = sorted({c for c in topic if c in limits.topic_forbidden})
            if bad:
                shown = " and ".join(repr(c) for c in bad)
                raise _fail(
                    at(key),
                    f"{topic!r} contains {shown}",
                    limits,
                    f"choose a device id or a topic template without {shown}",
                )


def _check_rates(cfg: UplinkConfig, limits: Limits, at: Callable[[str], str]) -> None:
    """The connection's publish rate and unacknowledged publishes (AWS IoT Core: 100 each)."""
    if limits.max_publishes_per_s is not None:
        cap = limits.max_publishes_per_s - AWS_CHANNEL_PUBLISHES_PER_S
        if cfg.max_messages_per_s > cap:
            raise _fail(
                at("max_messages_per_s"),
                f"{cfg.max_messages_per_s:g} leaves no room under {limits.max_publishes_per_s:g} "
                f"publishes/s for the shadow, jobs and command results",
                limits,
                f"use at most {cap:g}",
            )
    if limits.max_inflight is not None and cfg.inflight_window > limits.max_inflight:
        raise _fail(
            at("inflight_window"),
            f"{cfg.inflight_window} is above {limits.max_inflight} unacknowledged publishes",
            limits,
            f"use at most {limits.max_inflight}",
        )


def _check_aws_names(cfg: UplinkConfig, limits: Limits, at: Callable[[str], str]) -> None:
    """Thing name as client id; topics within the slash limit (Basic Ingest's prefix not
    counted; the events topic keeps one level for a rule's subfolder)."""
    assert limits.max_topic_slashes is not None
    client_id = cfg.client_id.format(**cfg.template_values())
    if not AWS_THING_NAME.fullmatch(client_id):
        raise _fail(
            at("device" if "{device}" in cfg.client_id else "client_id"),
            f"client id {client_id!r} is not a thing name",
            limits,
            "use the thing's name: 1 to 128 of letters, digits, ':', '_' and '-'",
        )
    values = cfg.template_values()
    topics = {f"topics.{n}": getattr(cfg.topics, n) for n in TopicsConfig.__dataclass_fields__}
    if cfg.presence.enabled:
        topics["presence.topic"] = cfg.presence.topic
    for key, template in topics.items():
        name = key.rpartition(".")[2]
        topic = template.format(**values)
        counted = topic
        if topic.startswith("$aws/rules/"):
            parts = topic.split("/", 3)
            if not limits.basic_ingest or name != "events" or len(parts) < 4 or not parts[2]:
                raise _fail(
                    at(key),
                    f"{topic!r} is not a Basic Ingest topic for events",
                    limits,
                    'only events may use Basic Ingest: "$aws/rules/<rule name>/<topic>"',
                )
            counted = parts[3]
        slashes = counted.count("/") + (1 if name == "events" else 0)
        if slashes > limits.max_topic_slashes:
            extra = " (one kept for a rule's subfolder)" if name == "events" else ""
            raise _fail(
                at(key),
                f"{topic!r} has {slashes} slashes{extra}, more than {limits.max_topic_slashes}",
                limits,
                "use fewer topic levels",
            )


def check_routes(cfg: UplinkConfig, rules: tuple[RuleConfig, ...]) -> None:
    """Refuse a route subfolder where the cloud has one telemetry topic: ThingsBoard acknowledges
    a message on `v1/gateway/telemetry/<subfolder>` and drops it, so the readings would be lost."""
    if cfg.channel != "thingsboard":
        return
    for i, rule in enumerate(rules):
        for j, step in enumerate(rule.steps):
            if isinstance(step, RouteStep) and step.subfolder is not None:
                raise ConfigError(
                    f"rules[{i}].steps[{j}].subfolder",
                    f"{step.subfolder!r}: ThingsBoard has one telemetry topic and drops "
                    "messages on any other",
                    "remove subfolder (a lane still works); each reading goes to its device",
                )
